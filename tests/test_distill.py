import json
import subprocess
import sys

import pytest
import torch

from dkdm.config import DistillConfig, SamplerConfig, UNetSpec
from dkdm.distill.loop import distill
from dkdm.distill.pool import TeacherPool
from dkdm.errors import DkdmError
from dkdm.schedulers import make_scheduler
from dkdm.teacher import load_teacher

STUDENT = UNetSpec(block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4)


def dcfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), student=STUDENT, steps=6, batch_size=8, shuffle_buffer=64, num_workers=0,
                device="cpu", log_every=1, sampler=SamplerConfig(steps=5))
    base.update(kw)
    return DistillConfig(**base)


def test_distill_from_cache_exports_plain_diffusers_student(tiny_cache, tiny_teacher, tmp_path):
    res = distill(dcfg(tmp_path, teacher=str(tiny_teacher), cache=str(tiny_cache)), progress=False)
    assert res["steps"] == 6 and res["records_per_s"] > 0
    student = tmp_path / "run" / "student"
    assert (tmp_path / "run" / "student_samples.png").stat().st_size > 0
    card = json.loads((student / "dkdm_student.json").read_text())
    assert card["cache_id"] and card["teacher"]["fingerprint"] == load_teacher(str(tiny_teacher)).fingerprint
    # a Python that never imports dkdm loads the student with diffusers alone
    code = f"""
import sys, json, diffusers, torch
from diffusers import UNet2DModel
u = UNet2DModel.from_pretrained({str(student / 'unet')!r})
cfg = json.load(open({str(student / 'scheduler' / 'scheduler_config.json')!r}))
s = getattr(diffusers, cfg['_class_name']).from_pretrained({str(student / 'scheduler')!r})
pipe = diffusers.DiffusionPipeline.from_pretrained({str(student)!r})
img = pipe(batch_size=1, num_inference_steps=3, output_type='np').images
assert 'dkdm' not in sys.modules
print(type(s).__name__, u.config.block_out_channels, img.shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "DDIMScheduler" and "(1, 16, 16, 1)" in out.stdout


def test_distill_reduces_loss_on_cache(tiny_cache, tmp_path):
    res = distill(dcfg(tmp_path, teacher="", cache=str(tiny_cache), steps=40, lr=3e-3), progress=False)
    rows = (tmp_path / "run" / "distill_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_foreign_cache_is_refused(tiny_cache, other_teacher, tmp_path):
    with pytest.raises(DkdmError, match="refusing to mix teachers"):
        distill(dcfg(tmp_path, teacher=str(other_teacher), cache=str(tiny_cache)), progress=False)


def test_not_a_cache_is_refused(tmp_path, tiny_teacher):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DkdmError, match="not a dkdm cache"):
        distill(dcfg(tmp_path, teacher=str(tiny_teacher), cache=str(tmp_path / "junk")), progress=False)


@pytest.mark.parametrize("field", ["steps", "batch_size"])
def test_sizes_must_be_positive(tmp_path, tiny_cache, field):
    with pytest.raises(DkdmError, match=field):
        distill(dcfg(tmp_path, cache=str(tiny_cache), teacher="", **{field: 0}), progress=False)


@pytest.mark.parametrize("variant,size", [("iterative", 8), ("shuffled", 8), ("dynamic", 16)])
def test_pool_variants(tiny_teacher, variant, size):
    teacher = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(steps=5), teacher.scheduler_config)
    pool = TeacherPool(teacher, sched, "ddim", variant, batch_size=8, rho=0.4, seed=0)
    assert pool.size == size  # dynamic: rho*T*b = 0.4*5*8
    idx_before = pool.idx.clone()
    x, t, out = pool.draw()
    assert x.shape == (8, 1, 16, 16) and out.shape == x.shape
    if variant == "iterative":
        assert (t == t[0]).all()
    else:
        assert len(set(t.tolist())) > 1  # spread over timesteps
    moved = (pool.idx != idx_before) | (idx_before == 4)
    assert moved.sum() >= 8  # the drawn members advanced (or restarted at t=0)


def test_pool_matches_whole_trajectories(tiny_teacher):
    """A pool member after k steps equals the teacher's own sampler after k steps from the same noise."""
    from dkdm.sampling import sample

    teacher = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(steps=5), teacher.scheduler_config)
    pool = TeacherPool(teacher, sched, "ddim", "iterative", batch_size=2, seed=0, trajectory_noise_from=0)
    seen = []
    sample(teacher, sched, [0, 1], teacher.sample_shape, callback=lambda i, t, inp, out: seen.append(inp.clone()),
           guided_ddim=True)  # teacher trajectories step DDIM like guided-diffusion
    for k in range(3):
        x, t, _ = pool.draw()
        assert torch.allclose(x, seen[k], atol=1e-5)


def test_live_distill_runs(tiny_teacher, tmp_path):
    res = distill(dcfg(tmp_path, teacher=str(tiny_teacher), source="live", pool="dynamic", steps=3), progress=False)
    assert res["pool"] == "dynamic"
    assert (tmp_path / "run" / "student" / "unet" / "config.json").is_file()


def test_tensorboard_events_are_written(tiny_cache, tmp_path):
    pytest.importorskip("tensorboard")  # a test extra: installed by scripts/test.sh
    distill(dcfg(tmp_path, teacher="", cache=str(tiny_cache), steps=3, tracker="tensorboard"), progress=False)
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_tracker_auto_and_bad_tracker(tiny_cache, tmp_path):
    with pytest.raises(DkdmError, match="tracker"):
        distill(dcfg(tmp_path, teacher="", cache=str(tiny_cache), steps=1, tracker="wandb-ish"), progress=False)
