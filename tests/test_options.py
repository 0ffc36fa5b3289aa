"""The option tables (dkdm/commands/options.py): one declaration gives the typer option and the override."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from dkdm.commands.errors import friendly
from dkdm.commands.options import DISTILL, Flag, command, ints, names, pick


def cli(flags, section="distill"):
    """A throwaway app with one table-driven command that prints the config it would run with."""
    app = typer.Typer()
    seen = {}

    @command(app, friendly, section, flags, name="run")
    def run(cfg, quiet: bool = typer.Option(False)):
        seen["cfg"], seen["quiet"] = cfg, quiet

    @app.command("other")
    def other():
        pass

    return app, seen


def test_one_line_adds_a_flag_that_sets_its_field(tmp_path):
    app, seen = cli((*DISTILL, Flag("ema_decay", "EMA decay of the exported weights.")))
    res = CliRunner().invoke(app, ["run", "--ema-decay", "0.9", "--sampler-steps", "7", "--remove", "mid, stage.1.attn",
                                   "--export-raw", "--quiet"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.ema_decay == 0.9 and cfg.sampler.steps == 7 and cfg.student_remove == ["mid", "stage.1.attn"]
    assert cfg.export_ema is False and seen["quiet"] is True
    assert cfg.steps == 3000  # not given: the recipe's (here the dataclass default) value stays
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--ema-decay" in help_text and "EMA decay of the exported weights." in help_text


def test_a_flag_is_typed_by_its_field():
    app, _ = cli(pick(DISTILL, "steps"))
    res = CliRunner().invoke(app, ["run", "--steps", "many"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "Invalid value for '--steps'" in res.output and "valid integer" in res.output


def test_a_table_with_a_typo_or_an_untyped_list_fails_at_import():
    with pytest.raises(TypeError, match="no field 'stpes'"):
        cli((Flag("stpes"),))
    with pytest.raises(TypeError, match="convert="):
        cli((Flag("student_remove"),))


def test_list_converters_name_the_flag_in_one_line():
    assert ints("1, 16,128", "--x") == [1, 16, 128] and names("a,,b ", "--y") == ["a", "b"]
    app, _ = cli((Flag("speed_batch_sizes", convert=ints),), section="evaluate")
    res = CliRunner().invoke(app, ["run", "--speed-batch-sizes", "1,x"])
    assert res.exit_code == 2 and "--speed-batch-sizes must be comma-separated integers, got '1,x'" in res.output
