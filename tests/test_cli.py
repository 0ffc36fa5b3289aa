import json
from pathlib import Path

import pytest

from conftest import run_cli

HERE = Path(__file__).parent


def one_line_error(res):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [l for l in res.stderr.splitlines() if l.strip() and "should be kept in float32" not in l]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_missing_teacher_path(tmp_path):
    msg = one_line_error(run_cli("generate", "--teacher", tmp_path / "nope", "--out", tmp_path / "c"))
    assert "does not exist" in msg


def test_not_a_cache(tmp_path, tiny_teacher):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("hello")
    msg = one_line_error(run_cli("distill", "--teacher", tiny_teacher, "--cache", tmp_path / "x", "--out", tmp_path / "o"))
    assert "not a dkdm cache" in msg
    one_line_error(run_cli("cache", "info", tmp_path / "x"))
    one_line_error(run_cli("cache", "verify", tmp_path / "x"))


@pytest.mark.parametrize("flag", ["--trajectories", "--shard-size", "--batch-size", "--steps"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_non_positive_sizes(tmp_path, tiny_teacher, flag, value):
    msg = one_line_error(run_cli("generate", "--teacher", tiny_teacher, "--out", tmp_path / "c", flag, value))
    assert "positive" in msg


def test_distill_zero_steps(tmp_path, tiny_cache):
    assert "positive" in one_line_error(run_cli("distill", "--cache", tiny_cache, "--teacher", "", "--steps", "0",
                                                "--out", tmp_path / "o"))


def test_cache_commands(tiny_cache):
    res = run_cli("cache", "info", tiny_cache)
    assert res.returncode == 0 and "records" in res.stdout and "t=" in res.stdout
    assert json.loads(run_cli("cache", "info", tiny_cache, "--json").stdout)["records"] == 60
    assert run_cli("cache", "verify", tiny_cache, "--deep").returncode == 0
    assert len(run_cli("cache", "ls", tiny_cache).stdout.splitlines()) == 3


def test_demo_end_to_end_on_embedded_teacher(tmp_path):
    """The demo's real path (builtin teacher -> cache -> student -> report) at toy sizes."""
    res = run_cli("demo", "--out", tmp_path / "d", "--recipe", HERE / "tiny_demo.toml", "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    for k in ("fid", "kid", "images_per_s", "params"):
        assert isinstance(rep["teacher"][k], (int, float)) and isinstance(rep["student"][k], (int, float))
    assert isinstance(rep["speedup"], float) and rep["speedup"] > 0
    assert rep["student"]["params"] < rep["teacher"]["params"]
    assert (tmp_path / "d" / "cache" / "manifest.json").is_file()
    assert (tmp_path / "d" / "student" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "teacher vs student" in res.stdout
