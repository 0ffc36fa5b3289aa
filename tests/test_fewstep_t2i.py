"""A few-step text-to-image student: a StableDiffusionPipeline folder with its LCM scheduler, run by plain
diffusers at 1-4 steps with a prompt, and evaluated by `dkdm evaluate-t2i` at its own steps and guidance."""

import json

import pytest

from dkdm.config import EvaluateConfig, SamplerConfig
from dkdm.distill.export import export_student
from dkdm.evaluate.t2i import evaluate_t2i
from dkdm.latent import add_pipeline_parts
from dkdm.schedulers import make_scheduler
from dkdm.teacher import load_teacher

from t2i_tiny import save_tiny_t2i
from plain_python import run_plain


@pytest.fixture(scope="module")
def fewstep(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i-few")
    teacher = save_tiny_t2i(root / "teacher")
    t = load_teacher(str(teacher))
    lcm = make_scheduler(SamplerConfig(scheduler="lcm", steps=2),
                         {**t.scheduler_config, "_class_name": "LCMScheduler", "original_inference_steps": 4})
    out = export_student(t.unet, lcm, root / "run" / "student",
                         {"teacher": {"source": str(teacher)},
                          "sampling": {"scheduler": "lcm", "steps": 2, "steps_supported": [1, 2, 4],
                                       "objective": "consistency", "guidance_scale": 1.0}})
    add_pipeline_parts(out, str(teacher))
    return root, teacher, out


def test_plain_diffusers_runs_it_at_1_2_4_steps_with_a_prompt(fewstep):
    _, _, student = fewstep
    code = ("import json, sys, torch\nfrom diffusers import StableDiffusionPipeline\n"
            f"p = StableDiffusionPipeline.from_pretrained({str(student)!r})\n"
            "res = {'sched': type(p.scheduler).__name__}\n"
            "for n in (1, 2, 4):\n"
            "    img = p('a handwritten digit 7', num_inference_steps=n, guidance_scale=1.0,"
            " generator=torch.Generator().manual_seed(0), output_type='np').images\n"
            "    res[n] = [list(img.shape), p.scheduler.timesteps.tolist()]\n"
            "assert not any(m == 'dkdm' or m.startswith('dkdm.') for m in sys.modules), 'dkdm was imported'\n"
            "print(json.dumps(res))\n")
    out = run_plain(code, student.parent)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["sched"] == "LCMScheduler"
    assert got["1"] == [[1, 16, 16, 1], [999]] and got["2"] == [[1, 16, 16, 1], [999, 499]]
    assert got["4"] == [[1, 16, 16, 1], [999, 749, 499, 249]]
    index = json.loads((student / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["scheduler"] == ["diffusers", "LCMScheduler"]


def test_evaluate_t2i_samples_the_student_at_its_own_steps_and_guidance(fewstep, tmp_path):
    root, teacher, student = fewstep
    (tmp_path / "p.txt").write_text("a handwritten digit 7\nthe number two\n")
    cfg = EvaluateConfig(teacher=str(teacher), students=[str(root / "run")], out=str(tmp_path / "ev"),
                         sampler=SamplerConfig(steps=3), num_samples=4, batch_size=4, speed_repeats=1, device="cpu",
                         cache_root=str(tmp_path / "cache"))
    rep = evaluate_t2i(cfg, str(tmp_path / "p.txt"), guidance_scale=3.0, progress=False)
    s, t = rep["models"]["run"], rep["models"]["teacher"]
    assert s["sampler"] == {"scheduler": "lcm", "steps": 2, "guidance_scale": 1.0}
    assert t["sampler"] == {"scheduler": "ddim", "steps": 3, "guidance_scale": 3.0}
    # same U-Net weights: the student's U-Net FLOPs are 2 steps x 1 call against the teacher's 3 steps x 2 calls
    assert s["flops_per_image"]["unet"] * 6 == t["flops_per_image"]["unet"] * 2
    assert "run (lcm-2, guidance 1)" in (tmp_path / "ev" / "report.md").read_text()


def test_serve_uses_the_students_own_steps_and_baked_in_guidance(fewstep):
    import torch

    from dkdm.serve.models import generate, load_served
    from dkdm.serve.schema import Limits, parse

    _, teacher, student = fewstep
    models = {"fast": load_served(f"fast={student.parent}", torch.device("cpu")),
              "teacher": load_served(f"teacher={teacher}", torch.device("cpu"))}
    req, _ = parse(json.dumps({"model": "fast", "prompt": "a handwritten digit 7"}).encode(), models, Limits())
    assert (req.scheduler, req.steps, req.guidance) == ("lcm", 2, 1.0)
    t_req, _ = parse(json.dumps({"model": "teacher", "prompt": "a handwritten digit 7"}).encode(), models, Limits())
    assert (t_req.scheduler, t_req.steps, t_req.guidance) == ("ddim", 25, 3.0)  # the teacher keeps the old defaults
    x = generate(models["fast"], req.seeds, req.steps, req.scheduler, guidance=req.guidance, prompts=[req.prompt])
    assert x.shape == (1, 1, 16, 16) and torch.isfinite(x).all()
    again = generate(models["fast"], req.seeds, req.steps, req.scheduler, guidance=req.guidance, prompts=[req.prompt])
    assert torch.equal(x, again)  # LCM's re-noising comes from the seed's generator
