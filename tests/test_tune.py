"""`dkdm tune` (issue 21): the bias metric by hand, a seeded search that resumes from its SQLite study and repeats
itself, failing trials recorded and survived, snippets that evaluate and serve accept, one-line CLI errors."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dkdm.config import SamplerConfig, TuneConfig, load_recipe
from dkdm.errors import DkdmError
from dkdm.tune.bias import bias_of, class_histogram, normalised_entropy, tv_interval, tv_to_uniform, uniform_floor
from dkdm.tune.study import run_tune

from conftest import save_tiny_teacher


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("refstats"))  # digits reference statistics, computed once for the module


def tiny_cfg(teacher, out, ref_root, **kw) -> TuneConfig:
    base = dict(teacher=str(teacher), out=str(out), trials=4, population=4, num_samples=12, batch_size=12,
                steps=[2, 3, 4], default=SamplerConfig(steps=3), device="cpu", cache_root=ref_root, energy="auto",
                confirm_rounds=1)
    return TuneConfig(**{**base, **kw})


def rows(out) -> list[dict]:
    return json.loads((Path(out) / "tune.json").read_text())["trials"]


# --- the bias metric, by hand -------------------------------------------------------------------------------

def test_bias_metric_by_hand_on_a_fixed_histogram():
    labels = [0] * 4 + [1] * 2 + [2] * 2 + [3] + [4]  # p = .4 .2 .2 .1 .1 0 0 0 0 0
    counts = class_histogram(labels)
    assert counts.tolist() == [4, 2, 2, 1, 1, 0, 0, 0, 0, 0]
    # TV = 1/2 (|.4-.1| + 2|.2-.1| + 2|.1-.1| + 5|0-.1|) = 1/2 (.3 + .2 + 0 + .5) = .5
    assert tv_to_uniform(counts) == pytest.approx(0.5)
    h = -(0.4 * math.log(0.4) + 2 * 0.2 * math.log(0.2) + 2 * 0.1 * math.log(0.1)) / math.log(10)
    assert normalised_entropy(counts) == pytest.approx(h) and h == pytest.approx(0.63877, abs=1e-4)
    assert tv_to_uniform([7] * 10) == pytest.approx(0) and normalised_entropy([7] * 10) == pytest.approx(1)
    one = bias_of([3] * 20)
    assert one["tv_to_uniform"] == pytest.approx(0.9) and one["normalised_entropy"] == pytest.approx(0)
    assert one["histogram"][3] == 20 and one["samples"] == 20
    lo, hi = tv_interval([4, 2, 2, 1, 1, 0, 0, 0, 0, 0])
    assert lo <= 0.5 < hi and hi > 0.6  # ten images tell little (five classes never drawn keep TV >= 0.5)
    assert 0.05 < uniform_floor(300) < 0.09 and uniform_floor(30000) < 0.01  # ~ sqrt(K/n) shrinks with n
    with pytest.raises(DkdmError, match="lie in"):
        class_histogram([0, 10])
    with pytest.raises(DkdmError, match="at least one"):
        class_histogram([])


# --- the search ----------------------------------------------------------------------------------------------

def test_search_resumes_from_its_sqlite_study(tmp_path, ref_root):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "tune"
    first = run_tune(tiny_cfg(teacher, out, ref_root, trials=3, population=2), progress=False)
    assert (out / "tune.db").is_file() and first["counts"]["COMPLETE"] + first["counts"]["FAIL"] == 3
    before = rows(out)
    assert before[0]["default"] and before[0]["setting"]["scheduler"] == "ddim" and before[0]["setting"]["steps"] == 3
    second = run_tune(tiny_cfg(teacher, out, ref_root, trials=5, population=2), progress=False)
    after = rows(out)
    assert len(after) == 5 and second["counts"]["COMPLETE"] + second["counts"]["FAIL"] == 5
    for a, b in zip(before, after[:3]):  # the first three were read back from SQLite, not run again
        assert (a["params"], a["metrics"], a["wall_s"]) == (b["params"], b["metrics"], b["wall_s"])
    with sqlite3.connect(out / "tune.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 5
    again = run_tune(tiny_cfg(teacher, out, ref_root, trials=5, population=2), progress=False)  # nothing left to run
    assert [r["wall_s"] for r in rows(out)] == [r["wall_s"] for r in after] and len(again["trials"]) == 5
    import optuna  # a process killed mid-trial leaves it RUNNING in SQLite: the next run records it as failed

    optuna.load_study(study_name="dkdm-tune", storage=f"sqlite:///{out / 'tune.db'}").ask()
    run_tune(tiny_cfg(teacher, out, ref_root, trials=7, population=2), progress=False)
    killed = rows(out)[5]
    assert killed["state"] == "FAIL" and "interrupted" in killed["error"] and len(rows(out)) == 7
    with pytest.raises(DkdmError, match="other settings"):  # another space is another search, not a continuation
        run_tune(tiny_cfg(teacher, out, ref_root, trials=6, population=2, steps=[2, 3, 5]), progress=False)


def test_same_seed_gives_the_same_trials(tmp_path, ref_root):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_tune(tiny_cfg(teacher, tmp_path / name, ref_root, seed=seed), progress=False)
        runs[name] = rows(tmp_path / name)
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert [r["params"] for r in a] == [r["params"] for r in b]
    assert [r["objectives"]["fid"] for r in a] == [r["objectives"]["fid"] for r in b]  # same seeds, same images
    assert [r["params"] for r in a[1:]] != [r["params"] for r in c[1:]]  # the seed matters (trial 0 is the default)


def test_a_resumed_search_does_not_replay_its_first_draws(tmp_path, ref_root):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "tune"
    run_tune(tiny_cfg(teacher, out, ref_root, trials=2, population=4, confirm_rounds=0), progress=False)
    run_tune(tiny_cfg(teacher, out, ref_root, trials=3, population=4, confirm_rounds=0), progress=False)
    r = rows(out)
    assert r[0]["default"] and r[2]["params"] != r[1]["params"]  # the restarted sampler draws afresh


def save_diverging_student(path: Path) -> Path:
    """The tiny teacher with its output layer scaled to 1e38: finite weights, infinite predictions."""
    from diffusers import UNet2DModel

    save_tiny_teacher(path)
    unet = UNet2DModel.from_pretrained(path / "unet")
    with torch.no_grad():
        unet.conv_out.weight.fill_(1e38)
    unet.save_pretrained(path / "unet")
    return path


def test_a_failing_trial_is_recorded_not_fatal(tmp_path, ref_root):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    broken = save_diverging_student(tmp_path / "broken")
    cfg = tiny_cfg(teacher, tmp_path / "tune", ref_root, students=[f"broken={broken}"], trials=6, population=6, seed=1)
    report = run_tune(cfg, progress=False)
    rs = rows(tmp_path / "tune")
    failed = [r for r in rs if r["state"] == "FAIL"]
    assert len(rs) == 6 and failed and report["counts"]["FAIL"] == len(failed)
    assert all(r["setting"]["model"] == "broken" and "non-finite" in r["error"] for r in failed)
    assert any(r["state"] == "COMPLETE" and r["setting"]["model"] == "teacher" for r in rs)
    assert "## Failed trials" in (tmp_path / "tune" / "tune.md").read_text()


def test_t2i_search_has_bias_and_adherence_and_snippets_that_evaluate_and_serve_accept(tmp_path, ref_root):
    from dkdm.serve.models import load_served
    from dkdm.serve.schema import Limits, parse

    from t2i_tiny import save_tiny_t2i

    teacher = save_tiny_t2i(tmp_path / "t2i")
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("a handwritten seven\na handwritten one\n")
    cfg = tiny_cfg(teacher, tmp_path / "tune", ref_root, trials=3, population=3, num_samples=8, bias_samples=8,
                   schedulers=["ddim", "euler"], prompts=str(subjects), prompt_templates=["{subject}", "the {subject}"],
                   neutral_prompts=["a handwritten digit"], guidance_min=1.0, guidance_max=3.0, default_guidance=2.0)
    report = run_tune(cfg, progress=False)
    assert report["objectives"] == ["fid", "adherence", "cost", "bias"]
    assert report["cost_unit"] == "seconds_per_image" and not report["energy"]["available"]  # no counter on this VM
    d = rows(tmp_path / "tune")[0]
    assert d["default"] and d["setting"]["guidance"] == 2.0 and d["setting"]["template"] == "{subject}"
    assert sum(d["metrics"]["bias_detail"]["histogram"]) == 8 and 0 <= d["metrics"]["bias"] <= 0.9
    md = (tmp_path / "tune" / "tune.md").read_text()
    assert "Energy: **unavailable**" in md and "seconds per image" in md and f"dkdm serve teacher={teacher}" in md
    cf = report["confirmed"]
    if cf is not None:  # the default re-timed against the settings the report names, in turns
        assert cf["default_trial"] == 0 and cf["trials"]["0"]["ratio_to_default"] == [1.0]
    for png in report["pngs"].values():
        assert (tmp_path / "tune" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w, chosen = next((w, c) for w, c in report["chosen"].items() if c)
    s = chosen["setting"]
    recipe = load_recipe(tmp_path / "tune" / chosen["files"]["recipe"])  # what evaluate(-t2i) --recipe reads
    assert (recipe.evaluate.sampler.scheduler, recipe.evaluate.sampler.steps) == (s["scheduler"], s["steps"])
    assert recipe.generate.guidance_scale == s["guidance"] and recipe.evaluate.teacher == str(teacher)
    prompts = Path(recipe.generate.prompts).read_text().splitlines()
    assert prompts == [s["template"].replace("{subject}", p) for p in ("a handwritten seven", "a handwritten one")]
    body = (tmp_path / "tune" / chosen["files"]["serve_request"]).read_bytes()
    req, _ = parse(body, {"teacher": load_served(str(teacher), torch.device("cpu"))}, Limits())  # BadRequest if not
    assert (req.scheduler, req.steps, req.guidance) == (s["scheduler"], s["steps"], s["guidance"])


# --- the command line ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,msg", [
    (["--steps", "a,b"], "comma-separated"),
    (["--steps", "0,3"], "positive integers"),
    (["--schedulers", "warp"], "unknown scheduler"),
    (["--steps", "5,10"], "default setting ddim-25 must lie inside"),
    (["--energy", "guess"], "energy must be one of"),
    (["--teacher", "/no/such/teacher"], "not found|could not load|does not exist"),
], ids=["steps-text", "steps-zero", "scheduler", "default-outside", "energy", "teacher"])
def test_cli_refuses_bad_input_in_one_line(tmp_path, extra, msg):
    import re

    from dkdm.cli import app

    res = CliRunner().invoke(app, ["tune", "--out", str(tmp_path / "t"), "--quiet", "--device", "cpu", *extra])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    assert re.search(msg, lines[0]), lines[0]
