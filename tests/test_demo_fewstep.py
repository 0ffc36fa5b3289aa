"""`dkdm demo --recipe digits-fewstep`: generate -> distill -> evaluate, the students at their own steps against
the teacher's front (a toy-sized copy of the recipe's wiring)."""

import json
from pathlib import Path

from dkdm.config import load_recipe
from dkdm.demo import run_demo

HERE = Path(__file__).resolve().parent


def test_fewstep_recipe_sets_students_against_the_teachers_whole_front():
    ev = load_recipe("digits-fewstep").evaluate
    assert set(ev.sweep_schedulers) == {"ddim", "dpm++", "euler", "ddpm"}
    assert min(ev.sweep_steps) == 1 and max(ev.sweep_steps) == 50 and 25 in ev.sweep_steps
    assert ev.num_samples >= 2048 and ev.own_samplers and (ev.sampler.scheduler, ev.sampler.steps) == ("ddim", 25)


def test_t2i_fewstep_recipe_walks_the_students_grid_with_a_copy_of_the_teacher():
    import diffusers

    from dkdm.distill.fewstep import nested_steps
    from dkdm.teacher import load_teacher

    r = load_recipe("digits-t2i-fewstep")
    g, d = r.generate.sampler, r.distill
    assert (g.scheduler, g.coverage, g.eta, r.generate.keep) == ("ddim", "grid", 0.0, "all")
    t = load_teacher("builtin:digits-t2i")
    sched = diffusers.DDIMScheduler.from_config({**t.scheduler_config, "timestep_spacing": g.timestep_spacing})
    sched.set_timesteps(g.steps)
    assert d.fewstep_steps in nested_steps(sched.timesteps.tolist(), 1000, t.scheduler_config)
    assert (d.objective, d.student_init) == ("trajectory", "teacher")
    assert list(d.student.block_out_channels) == list(t.unet.config.block_out_channels)


def test_fewstep_demo_end_to_end(tmp_path):
    lines = []
    rep = run_demo(tmp_path / "d", recipe=str(HERE / "tiny_fewstep.toml"), progress=False, log=lines.append)
    few = rep["fewstep"]
    # the eps student learned only the cache's 4-step grid: its card says ddim-4, evaluated there, not at the main 8
    assert [(r["model"], r["scheduler"], r["steps"]) for r in few["rows"]] == [("d", "ddim", 4)]
    assert {p["model"] for p in rep["sweep"]["points"]} == {"teacher"}  # only the teacher's front is swept
    assert few["front"]["teacher_points"] == 4 and few["teacher"]["steps"] == 8
    assert any(line.startswith("students at their own scheduler and steps") for line in lines)
    assert any("d ddim-4: FID" in line for line in lines)
    on_disk = json.loads((tmp_path / "d" / "report.json").read_text())
    assert on_disk["fewstep"]["rows"][0]["fid"] == few["rows"][0]["fid"]
    assert (tmp_path / "d" / "pareto_fewstep.png").stat().st_size > 5000
