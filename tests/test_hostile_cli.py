"""Careless and hostile input at the command line: one line on stderr and a non-zero exit, never a traceback
(unless --debug / DKDM_DEBUG=1); SIGTERM during `dkdm distill` saves a checkpoint and exits 143."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dkdm.cli import app


runner = CliRunner()


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line(res, *, code=2) -> str:
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def gen(teacher, out, *extra):
    return cli("generate", "--teacher", teacher, "--out", out, "--trajectories", "4", "--shard-size", "4",
               "--steps", "3", "--device", "cpu", "--quiet", *extra)


@pytest.mark.parametrize("extra,msg", [
    (["--eta", "-3"], "--eta must lie in \\[0, 1\\]"),
    (["--eta", "nan"], "--eta must lie"),
    (["--steps", "100000"], "--steps is 100,000, over the limit"),
    (["--trajectories", "1000000000000"], "shards .* over the limit"),
    (["--batch-size", "1000000000"], "absurd"),
    (["--guidance-scale", "inf"], "finite"),
    (["--format", "pickle"], "unknown cache format"),
    (["--keep", "every:-1"], "positive"),
], ids=["eta-negative", "eta-nan", "steps-huge", "trajectories-huge", "batch-huge", "guidance-inf", "format", "keep"])
def test_generate_refuses_nonsense(tiny_teacher, tmp_path, extra, msg):
    import re
    line = one_line(gen(tiny_teacher, tmp_path / "c", *extra))
    assert re.search(msg, line), line
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.tar"))


@pytest.mark.parametrize("extra,msg", [
    (["--lr", "-1"], "lr -1.0 must be in"),
    (["--num-workers", "-1"], "num_workers -1"),
    (["--batch-size", "1000000000"], "absurdly large"),
    (["--on-bad-shard", "ignore"], "stop or skip"),
    (["--steps", "-5"], "positive"),
], ids=["lr", "workers", "batch", "on-bad-shard", "steps"])
def test_distill_refuses_nonsense(tiny_cache, tmp_path, extra, msg):
    assert msg in one_line(cli("distill", "--cache", tiny_cache, "--out", tmp_path / "o", "--device", "cpu", *extra))


def test_out_that_cannot_be_written_is_one_line(tiny_teacher, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    line = one_line(gen(tiny_teacher, blocker / "c"))
    assert str(blocker) in line


def test_non_utf8_recipe(tmp_path):
    r = tmp_path / "r.toml"
    r.write_bytes(b"[generate]\nteacher = \"\xff\xfe\"\n")
    assert "not UTF-8" in one_line(cli("generate", "--recipe", r))


def test_damaged_teachers(tiny_teacher, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(tiny_teacher, t)
    w = t / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    assert "cannot load the model" in one_line(gen(t, tmp_path / "c1"))
    from safetensors.torch import load_file
    sd = load_file(str(tiny_teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    w.unlink()
    torch.save(sd, t / "unet" / "diffusion_pytorch_model.bin")
    assert "pickled" in one_line(gen(t, tmp_path / "c2"))
    (t / "unet" / "diffusion_pytorch_model.bin").unlink()
    shutil.copy(tiny_teacher / "unet" / "diffusion_pytorch_model.safetensors", w)
    (t / "unet" / "config.json").write_text("{\"_class_name\": ")
    assert "config.json is not valid JSON" in one_line(gen(t, tmp_path / "c3"))


def test_forged_cache_commands_are_one_line(tiny_cache, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(tiny_cache, c)
    m = json.loads((c / "manifest.json").read_text())
    (c / "manifest.json").write_text(json.dumps({**m, "scheduler": {"class": "Pickler", "config": {}}}))
    for cmd in (["cache", "info"], ["cache", "verify"], ["cache", "ls"], ["cache", "seal"]):
        assert "scheduler" in one_line(cli(*cmd, c))
    (c / "manifest.json").write_text(json.dumps(m))
    side = json.loads((c / "shards" / "traj-000000.json").read_text())
    del side["index"]
    (c / "shards" / "traj-000000.json").write_text(json.dumps(side))
    assert "lacks ['index']" in one_line(cli("cache", "seal", c))
    (c / "manifest.json").write_text(json.dumps({**m, "shards": [], "totals": {}}))
    res = cli("cache", "verify", c)
    assert res.exit_code == 1 and "lists no shard" in res.stderr


def test_verify_names_each_bad_shard(tiny_cache, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(tiny_cache, c)
    (c / "shards" / "traj-000001.tar").write_bytes(b"x" * 10)
    res = cli("cache", "verify", "--deep", c)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert [l.split()[1] for l in res.stderr.splitlines()] == ["traj-000001.tar:"]


def test_debug_shows_the_traceback(tiny_teacher, tmp_path):
    res = cli("generate", "--teacher", tiny_teacher, "--out", tmp_path / "c", "--eta", "-3", env={"DKDM_DEBUG": "1"})
    assert res.exit_code != 0 and "eta" in str(res.exception) and res.exc_info is not None
    res = cli("--debug", "generate", "--teacher", tiny_teacher, "--out", tmp_path / "c", "--eta", "-3", env={"DKDM_DEBUG": ""})
    assert "eta" in str(res.exception)
    os.environ.pop("DKDM_DEBUG", None)


def test_evaluate_refuses_a_nan_student(tmp_path):
    from dkdm.config import UNetSpec
    from dkdm.students import build_unet

    unet = build_unet(UNetSpec(block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4))
    with torch.no_grad():
        next(unet.parameters()).fill_(float("nan"))
    unet.save_pretrained(tmp_path / "s" / "unet")
    line = one_line(cli("evaluate", "--student", tmp_path / "s", "--num-samples", "4", "--device", "cpu",
                        "--out", tmp_path / "e", "--quiet"))
    assert "NaN/Inf weights" in line


def test_sigterm_during_cli_distill_saves_and_exits_143(tiny_cache, tmp_path):
    """The real thing: a cluster's SIGTERM to the `dkdm distill` process."""
    out = tmp_path / "o"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = [sys.executable, "-m", "dkdm.cli", "distill", "--cache", str(tiny_cache), "--out", str(out), "--steps", "100000",
            "--batch-size", "4", "--shuffle-buffer", "16", "--device", "cpu", "--checkpoint-every", "0", "--quiet",
            "--tracker", "none"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = out / "distill_log.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted by SIGTERM: checkpoint saved" in stdout
    assert len(list((out / "checkpoints").glob("step-*"))) == 1
