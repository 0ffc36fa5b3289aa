"""`dkdm evaluate` samples each student with its own scheduler and steps and sets it against the teacher's front."""

import json

import pytest

from dkdm.config import EvaluateConfig, SamplerConfig
from dkdm.distill.export import export_student
from dkdm.evaluate.run import evaluate
from dkdm.schedulers import make_scheduler
from dkdm.teacher import load_teacher


@pytest.fixture(scope="module")
def report(tiny_teacher, tmp_path_factory):
    """Two students with the teacher's weights: 'lcm' (card: LCM at 1/2/4) and 'same' (card: DDIM-3, the main setting)."""
    root = tmp_path_factory.mktemp("fewstep")
    t = load_teacher(str(tiny_teacher))
    lcm = make_scheduler(SamplerConfig(scheduler="lcm", steps=2), {**t.scheduler_config, "_class_name": "LCMScheduler",
                                                                    "original_inference_steps": 4})
    export_student(t.unet, lcm, root / "lcm" / "student",
                   {"sampling": {"scheduler": "lcm", "steps": 2, "steps_supported": [1, 2, 4], "objective": "consistency"}})
    export_student(t.unet, make_scheduler(SamplerConfig(steps=3), t.scheduler_config), root / "same" / "student",
                   {"sampler": {"coverage": "grid"}})
    # 'vpred': exported with a v-prediction DDIM-3 (as a trajectory student is): every setting must use that config
    export_student(t.unet, make_scheduler(SamplerConfig(steps=3), {**t.scheduler_config, "prediction_type": "v_prediction"}),
                   root / "vpred" / "student", {"sampling": {"scheduler": "ddim", "steps": 3, "steps_supported": [3],
                                                             "objective": "trajectory", "jump_states": 2}})
    cfg = EvaluateConfig(teacher=str(tiny_teacher), students=[str(root / "lcm"), str(root / "same" / "student"),
                                                              str(root / "vpred")],
                         out=str(root / "ev"), sampler=SamplerConfig(steps=3), num_samples=40, batch_size=20,
                         speed_repeats=1, device="cpu", cache_root=str(root / "cache"), embeddings=False,
                         sweep_schedulers=["ddim", "euler"], sweep_steps=[1, 3], sweep_samples=20)
    return evaluate(cfg, progress=False), root / "ev"


def test_each_student_at_its_own_steps(report):
    rep, out = report
    few = rep["fewstep"]
    got = [(r["model"], r["scheduler"], r["steps"]) for r in few["rows"]]
    assert got == [("lcm", "lcm", 1), ("lcm", "lcm", 2), ("lcm", "lcm", 4), ("same", "ddim", 3), ("vpred", "ddim", 3)]
    rows = {(r["model"], r["steps"]): r for r in few["rows"]}
    # 'same' at its own setting is the main setting: same seeds, same sampler -> the main table's FID exactly
    assert rows["same", 3]["fid"] == pytest.approx(rep["students"]["same"]["fid"], rel=1e-9)
    assert rows["same", 3]["fid_ratio"] == pytest.approx(rep["students"]["same"]["fid"] / rep["teacher"]["fid"])
    # ... because it IS the main table's row: not sampled or timed again (its turns are the main table's)
    assert rows["same", 3]["reused"] == "main table" and "reused" not in rows["lcm", 2]
    assert rows["same", 3]["images_per_s"] == pytest.approx(rep["students"]["same"]["images_per_s"], rel=1e-12)
    # and on the sweep's seeds (a prefix) its FID is the sweep's own ddim-3 point for that student
    sweep_pt = next(p for p in rep["sweep"]["points"] if (p["model"], p["scheduler"], p["steps"]) == ("same", "ddim", 3))
    assert rows["same", 3]["front_fid"] == pytest.approx(sweep_pt["fid"], rel=1e-9)
    # the v-prediction student: main table, own row and sweep all sample through its own config, not the teacher's
    assert rows["vpred", 3]["fid"] == pytest.approx(rep["students"]["vpred"]["fid"], rel=1e-9)
    assert abs(rows["vpred", 3]["fid"] - rep["teacher"]["fid"]) > 1e-3  # the same eps weights read as v: other images
    vsweep = next(p for p in rep["sweep"]["points"] if (p["model"], p["scheduler"], p["steps"]) == ("vpred", "ddim", 3))
    assert rows["vpred", 3]["front_fid"] == pytest.approx(vsweep["fid"], rel=1e-9)
    assert rows["lcm", 1]["front_fid"] != rows["lcm", 1]["fid"]  # 20 of the 40 seeds: another estimate
    assert len({round(rows["lcm", s]["fid"], 6) for s in (1, 2, 4)}) == 3  # three different samplers really ran
    for r in few["rows"]:
        assert r["images_per_s"] > 0 and len(r["speedup_per_round"]) == 1
    assert few["teacher"]["steps"] == 3 and few["teacher"]["fid"] == rep["teacher"]["fid"]
    # the existing report fields are still there
    assert {"teacher", "student", "students", "speedup", "sweep"} <= set(rep)


def test_front_reads_off_the_teacher_sweep(report):
    rep, out = report
    teacher_pts = [p for p in rep["sweep"]["points"] if p["model"] == "teacher"]
    for r in rep["fewstep"]["rows"]:
        faster = [p for p in teacher_pts if p["seconds_per_image"] <= r["seconds_per_image"]]
        want = min(faster, key=lambda p: p["fid"]) if faster else None
        assert (r["teacher_same_time"] or {}).get("fid") == (want or {}).get("fid")
        reach = [p for p in teacher_pts if p["fid"] <= r["front_fid"]]
        if reach:
            cheapest = min(reach, key=lambda p: p["seconds_per_image"])
            assert r["equal_fid"]["speedup"] == pytest.approx(cheapest["seconds_per_image"] / r["seconds_per_image"])
        else:
            assert r["equal_fid"] is None and r["equal_fid_lower_bound"]["speedup"] > 0
    front = rep["fewstep"]["front"]["front"]
    allpts = teacher_pts + rep["fewstep"]["front"]["student_points"]
    for p in front:  # nothing beats a front point on both time and FID
        assert not any(q["seconds_per_image"] < p["seconds_per_image"] and q["fid"] < p["fid"] for q in allpts)
    md = (out / "report.md").read_text()
    assert "## Students at their own scheduler and steps" in md and "| lcm | lcm | 1 |" in md
    assert (out / "pareto_fewstep.png").stat().st_size > 5000
    from PIL import Image

    grid = Image.open(out / "fewstep_grid.png")  # six panels (teacher + 5 student settings) of 4x4 images, 69x4 px
    assert grid.size == (6 * 276 + 5 * 8, 276 + 14)
    assert json.loads((out / "report.json").read_text())["pngs"]["pareto_fewstep"] == "pareto_fewstep.png"


def test_equal_fid_confirmed_on_the_main_seeds(report, tiny_teacher):
    """20 sweep seeds < 40 main ones: the teacher's front settings near each crossing are scored on the main seeds,
    and the crossing read there is the cheapest confirmed setting reaching the student's main-seed FID."""
    rep, out = report
    conf = rep["fewstep"]["front"]["confirmed"]
    assert conf["n"] == 40 and conf["points"]
    by = {(p["scheduler"], p["steps"]): p for p in conf["points"]}
    if ("ddim", 3) in by:  # the main setting on the main seeds is the main table's teacher row itself
        assert by["ddim", 3]["fid"] == pytest.approx(rep["teacher"]["fid"], rel=1e-9)
    front = rep["fewstep"]["front"]["teacher_front"]
    for r in rep["fewstep"]["rows"]:
        eq, lb = r.get("equal_fid_n"), r.get("equal_fid_n_lower_bound")
        assert (eq is None) != (lb is None)
        if eq:
            assert eq["fid"] <= r["fid"] and eq["speedup"] == pytest.approx(eq["seconds_per_image"] / r["seconds_per_image"])
            i = next(k for k, p in enumerate(front) if (p["scheduler"], p["steps"]) == (eq["scheduler"], eq["steps"]))
            if i > 0:  # the next cheaper front setting was scored too, and does not reach it
                assert by[front[i - 1]["scheduler"], front[i - 1]["steps"]]["fid"] > r["fid"]
        else:
            assert all(p["fid"] > r["fid"] for p in conf["points"])
    assert "teacher, equal FID (n = 40)" in (out / "report.md").read_text()


def test_confirm_walks_the_front_from_the_sweeps_crossing():
    from dkdm.evaluate.front_confirm import confirm_equal_fid

    front = [{"scheduler": "ddim", "steps": k, "fid": 100 / k, "seconds_per_image": k / 1000} for k in (1, 2, 4, 8, 16)]
    at_n = {1: 90.0, 2: 40.0, 4: 21.0, 8: 12.0, 16: 7.0}  # on the main seeds
    calls = []

    def rescore(p):
        calls.append(p["steps"])
        return at_n[p["steps"]]

    rows = [{"fid": 45.0, "seconds_per_image": 0.0005, "equal_fid": front[2]},  # sweep: 4 steps; main seeds: 2 reach it
            {"fid": 11.0, "seconds_per_image": 0.0005, "equal_fid": front[3]},  # sweep: 8; main seeds: 8 fails, 16 reaches
            {"fid": 5.0, "seconds_per_image": 0.0005, "equal_fid": None}]  # beyond the whole front
    pts = confirm_equal_fid(front, rows, rescore)
    assert rows[0]["equal_fid_n"]["steps"] == 2 and rows[0]["equal_fid_n"]["speedup"] == pytest.approx(4.0)
    assert rows[1]["equal_fid_n"]["steps"] == 16 and rows[1]["equal_fid_n"]["fid"] == 7.0
    assert "equal_fid_n" not in rows[2] and rows[2]["equal_fid_n_lower_bound"]["steps"] == 16
    assert sorted(calls) == [1, 2, 4, 8, 16] and len(calls) == len(set(calls))  # each setting scored once
    assert [p["steps"] for p in pts] == [1, 2, 4, 8, 16] and pts[0]["fid_sweep"] == 100.0


def test_own_samplers_off_and_students_without_a_card(tiny_teacher, tmp_path):
    cfg = EvaluateConfig(teacher=str(tiny_teacher), students=[str(tiny_teacher)], out=str(tmp_path / "ev"),
                         sampler=SamplerConfig(steps=2), num_samples=8, batch_size=8, speed_repeats=1, device="cpu",
                         cache_root=str(tmp_path / "cache"), embeddings=False)
    assert evaluate(cfg, progress=False)["fewstep"] is None  # a plain model folder names no own sampling


def test_cli_sweeps_the_teacher_only_and_prints_the_own_settings(report, tiny_teacher):
    from conftest import run_cli

    _, out = report
    root = out.parent
    res = run_cli("evaluate", "--student", root / "lcm", "--teacher", tiny_teacher, "--out", root / "cli",
                  "--num-samples", 8, "--batch-size", 8, "--steps", 2, "--device", "cpu", "--cache-root", root / "cache",
                  "--sweep-schedulers", "ddim", "--sweep-steps", "1", "--sweep-samples", 12, "--sweep-teacher-only", "--no-confirm-front", "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "students at their own scheduler and steps" in res.stdout and "lcm lcm-4: FID" in res.stdout
    rep = json.loads((root / "cli" / "report.json").read_text())
    assert {p["model"] for p in rep["sweep"]["points"]} == {"teacher"}
    assert rep["config"]["sweep_students"] is False and rep["config"]["own_samplers"] is True
    assert rep["config"]["confirm_front"] is False and "confirmed" not in rep["fewstep"]["front"]
    # 12 sweep seeds are not a prefix of the 8 main ones: the students are sampled again on the sweep's seeds
    assert rep["fewstep"]["front"]["n"] == rep["fewstep"]["front"]["n_teacher"] == 12
    assert all(r["front_fid"] != r["fid"] for r in rep["fewstep"]["rows"])
