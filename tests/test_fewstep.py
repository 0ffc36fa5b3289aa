"""Few-step training (issue 23): trajectory pairs read from real caches, each objective's target by hand, resume
of a pair stream, and one short distill per objective, all on tiny models built from configs."""

from __future__ import annotations

import json
import math

import diffusers
import pytest
import torch

from conftest import TINY, gen_cfg
from dkdm.cache import backend
from dkdm.cache.paths import PairStream
from dkdm.cache.reader import CacheReader
from dkdm.config import DistillConfig, SamplerConfig, UNetSpec
from dkdm.distill.objectives.common import PairBatch
from dkdm.distill.objectives.consistency import ConsistencyObjective
from dkdm.distill.objectives.trajectory import TrajectoryObjective, ddim_jump, jump_target
from dkdm.distill.sources import PairSource
from dkdm.errors import DkdmError
from dkdm.sampling import sample, trajectory_seed, unet_fn
from dkdm.students import build_unet
from dkdm.weights import load_unet

STEPS = 6


def _walk(teacher, tmp_path_factory, fmt: str):
    from dkdm.generate import generate

    out = tmp_path_factory.mktemp(f"walk-{fmt}") / "c"
    generate(gen_cfg(teacher, out, format=fmt, sampler=SamplerConfig(steps=STEPS, coverage="grid")), progress=False)
    return out


@pytest.fixture(scope="module", params=["wds", "zarr"])
def walk_cache(request, tiny_teacher, tmp_path_factory):
    """12 trajectories of a DDIM-6 walk in 3 shards, every state kept."""
    return _walk(tiny_teacher, tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def wds_walk(tiny_teacher, tmp_path_factory):
    return _walk(tiny_teacher, tmp_path_factory, "wds")


def cache_sched(reader):
    m = reader.manifest["scheduler"]
    s = getattr(diffusers, m["class"]).from_config(m["config"])
    s.set_timesteps(reader.manifest["sampler"]["steps"])
    return s


def all_states(reader) -> dict:
    """(traj, step) -> x_t (float32) straight from the shards, record by record."""
    out = {}
    for shard in reader.manifest["shards"]:
        for x, t, _, meta in backend.records(reader.store, shard, reader.dtype, reader.manifest):
            out[(meta["traj"], meta["step"])] = (x, t)
    return out


def find(states: dict, x: torch.Tensor):
    hits = [k for k, (xs, _) in states.items() if torch.equal(xs, x)]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("jump, stride", [(1, 1), (3, 1), (3, 3)])
def test_pairs_come_from_one_trajectory_in_order(walk_cache, tiny_teacher, jump, stride):
    reader = CacheReader(str(walk_cache))
    states = all_states(reader)
    stream = PairStream(reader, 8, cache_sched(reader), jump, stride, shuffle_buffer=16, seed=3, epochs=1)
    teacher = load_unet(diffusers.UNet2DModel, tiny_teacher, "unet")
    sched = cache_sched(reader)
    seen, ends = set(), {}
    for x_i, t_i, x_j, t_j, end_j, x0, cond in stream:
        for r in range(len(x_i)):
            traj, step = find(states, x_i[r])
            assert int(t_i[r]) == states[(traj, step)][1]
            if step + jump == STEPS:  # the endpoint: t = 0, x_j = x0 of this trajectory
                assert end_j[r] == 1 and t_j[r] == 0 and torch.equal(x_j[r], x0[r])
                ends[traj] = x0[r]
            else:
                assert end_j[r] == 0
                assert find(states, x_j[r]) == (traj, step + jump)  # same trajectory, `jump` states later
                assert int(t_j[r]) == states[(traj, step + jump)][1] < int(t_i[r])
            seen.add((traj, step))
    # every start of every trajectory came exactly once in the epoch (stride: only the sampler's grid, 0 and 3 of
    # a 6-step walk for a 2-step student), and the batches mixed trajectories
    assert seen == {(j, s) for j in range(12) for s in range(0, STEPS + 1 - jump, stride)}
    # the derived endpoint is the teacher's own DDIM sample of that seed (up to the float16 records)
    for traj in (0, 7):
        full = sample(unet_fn(teacher), sched, [trajectory_seed(0, traj)], (1, 16, 16), guided_ddim=True, clamp=False)
        assert torch.allclose(ends[traj], full[0], atol=2e-2), (ends[traj] - full[0]).abs().max()


def test_pair_stream_refuses_walks_it_cannot_pair(tiny_teacher, tmp_path):
    from dkdm.generate import generate

    out = tmp_path / "partial"
    generate(gen_cfg(tiny_teacher, out, keep="every:2", sampler=SamplerConfig(steps=4, coverage="grid")), progress=False)
    reader = CacheReader(str(out))
    with pytest.raises(DkdmError, match="--keep all"):
        PairStream(reader, 4, cache_sched(reader), 1)
    shifted = tmp_path / "offsets"  # every state kept, but each trajectory on its own shifted grid
    generate(gen_cfg(tiny_teacher, shifted, sampler=SamplerConfig(steps=4, coverage="offsets")), progress=False)
    reader = CacheReader(str(shifted))
    with pytest.raises(DkdmError, match="--coverage grid"):
        PairStream(reader, 4, cache_sched(reader), 1)


def test_pair_source_resumes_bit_identically_mid_trajectory(walk_cache):
    reader = CacheReader(str(walk_cache))
    sched = cache_sched(reader)
    a = PairSource(reader, 5, 16, seed=1, rank=0, world=1, num_workers=0, device="cpu", sched=sched, jump=2)
    for _ in range(7):  # 35 of 48 pairs: inside the second shard's trajectories
        next(a)
    state = a.state_dict()
    b = PairSource(reader, 5, 16, seed=1, rank=0, world=1, num_workers=0, device="cpu", sched=sched, jump=2)
    b.load_state_dict(state)
    for _ in range(3):
        for u, v in zip(next(a), next(b)):
            assert torch.equal(u, v)


def test_trajectory_target_by_hand(tiny_teacher):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ac = sched.alphas_cumprod
    t_i, t_j = 500, 250
    a_i, a_j = float(ac[t_i]), float(ac[t_j])
    torch.manual_seed(0)
    x_i, x_j = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    # DDIM (eta 0): x_j = sqrt(a_j) x0 + sqrt(1-a_j) (x_i - sqrt(a_i) x0) / sqrt(1-a_i); solve for x0 at one pixel
    r = math.sqrt((1 - a_j) / (1 - a_i))
    by_hand = (x_j[0, 0, 3, 4].item() - r * x_i[0, 0, 3, 4].item()) / (math.sqrt(a_j) - r * math.sqrt(a_i))
    A_i, A_j = torch.tensor(a_i).view(1, 1, 1, 1), torch.tensor(a_j).view(1, 1, 1, 1)
    x0 = jump_target(x_i, x_j, A_i, A_j)
    assert x0[0, 0, 3, 4].item() == pytest.approx(by_hand, rel=1e-5)
    assert torch.allclose(ddim_jump(x0, x_i, A_i, A_j), x_j, atol=1e-5)
    # the loss: x0-space MSE between the student's v-prediction x0 = sqrt(a) x - sqrt(1-a) v and that target
    student = build_unet(TINY)
    b = PairBatch(x_i, torch.tensor([t_i]), x_j, torch.tensor([t_j]), torch.tensor([False]), x_j)
    loss, parts = TrajectoryObjective(ac, 1)(b, student)
    v = student(x_i, torch.tensor([t_i])).sample
    expect = ((math.sqrt(a_i) * x_i - math.sqrt(1 - a_i) * v - x0) ** 2).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    # an endpoint jump (alpha_bar = 1) has the endpoint itself as target
    b_end = PairBatch(x_i, torch.tensor([t_i]), x_j, torch.tensor([0]), torch.tensor([True]), x_j)
    loss_end, _ = TrajectoryObjective(ac, 1)(b_end, student)
    assert loss_end.item() == pytest.approx(((math.sqrt(a_i) * x_i - math.sqrt(1 - a_i) * v - x_j) ** 2).mean().item(), rel=1e-5)


def test_consistency_target_by_hand():
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ac = ddpm.alphas_cumprod
    lcm = diffusers.LCMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    torch.manual_seed(1)
    student = build_unet(TINY)
    obj = ConsistencyObjective(ac, 1, lcm, student, target_ema=0.5, endpoint_weight=0.25)
    with torch.no_grad():  # make the EMA target differ from the student
        for p in obj.target.parameters():
            p.add_(0.01)
    t_i, t_j = 40, 20
    x_i, x_j, x0 = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)

    def f_by_hand(model, x, t):  # LCM: c_skip = s²/((10t)² + s²), c_out = 10t / sqrt((10t)² + s²), s = 0.5
        a = float(ac[t])
        v = model(x, torch.tensor([t])).sample
        c_skip, c_out = 0.25 / ((10 * t) ** 2 + 0.25), 10 * t / math.sqrt((10 * t) ** 2 + 0.25)
        return c_skip * x + c_out * (math.sqrt(a) * x - math.sqrt(1 - a) * v)

    b = PairBatch(x_i, torch.tensor([t_i]), x_j, torch.tensor([t_j]), torch.tensor([False]), x0)
    loss, parts = obj(b, student)
    pred, tgt = f_by_hand(student, x_i, t_i), f_by_hand(obj.target, x_j, t_j)
    assert parts["cd_mse"].item() == pytest.approx(((pred - tgt) ** 2).mean().item(), rel=1e-4)
    assert loss.item() == pytest.approx((((pred - tgt) ** 2).mean() + 0.25 * ((pred - x0) ** 2).mean()).item(), rel=1e-4)
    # at the endpoint the target is x0 itself (f(x, 0) = x), not the target network
    b_end = PairBatch(x_i, torch.tensor([t_i]), x0, torch.tensor([0]), torch.tensor([True]), x0)
    _, parts_end = obj(b_end, student)
    assert parts_end["cd_mse"].item() == pytest.approx(((pred - x0) ** 2).mean().item(), rel=1e-4)
    # the target moves toward the student by 1 - mu per step
    before = [p.clone() for p in obj.target.parameters()]
    obj.after_step(student)
    for p0, pt, ps in zip(before, obj.target.parameters(), student.parameters()):
        assert torch.allclose(pt, 0.5 * p0 + 0.5 * ps)


def distill_cfg(teacher, cache, out, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), cache=str(cache), out=str(out), steps=4, batch_size=8, shuffle_buffer=32,
                device="cpu", tracker="none", checkpoint_every=0, log_every=1, warmup_steps=1,
                student=UNetSpec(**{**TINY.__dict__}))
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize("objective,steps,sched_cls", [("trajectory", 2, "DDIMScheduler"), ("consistency", 1, "LCMScheduler")])
def test_short_fewstep_distill_exports_its_scheduler(wds_walk, tiny_teacher, tmp_path, objective, steps, sched_cls):
    from dkdm.distill.loop import distill

    walk_cache = wds_walk
    cfg = distill_cfg(tiny_teacher, walk_cache, tmp_path / objective, objective=objective, fewstep_steps=steps,
                      student_init="teacher", endpoint_weight=0.5,
                      pair_starts="grid" if objective == "trajectory" else "all")
    res = distill(cfg, progress=False)
    assert math.isfinite(res["final_loss"])
    card = json.loads((tmp_path / objective / "student" / "dkdm_student.json").read_text())
    assert card["sampling"]["objective"] == objective and card["sampling"]["steps"] == steps
    assert card["student"]["init"] == "teacher"
    assert card["trained_on"]["trajectories"] == [0, 12] and card["trained_on"]["base_seed"] == 0
    assert set(card["objective"]["units"]) >= ({"x0_mse"} if objective == "trajectory" else {"cd_mse", "endpoint_mse"})
    sc = json.loads((tmp_path / objective / "student" / "scheduler" / "scheduler_config.json").read_text())
    assert sc["_class_name"] == sched_cls and sc["prediction_type"] == "v_prediction" and sc["timestep_spacing"] == "trailing"
    if objective == "consistency":
        assert sc["original_inference_steps"] == STEPS and card["sampling"]["steps_supported"] == [1, 2]
    log = (tmp_path / objective / "distill_log.csv").read_text().splitlines()
    assert len(log) == 5 and ("x0_mse" if objective == "trajectory" else "cd_mse") in log[0]
    # the exported student samples with that scheduler in plain diffusers at its steps
    sched = getattr(diffusers, sched_cls).from_pretrained(tmp_path / objective / "student" / "scheduler")
    sched.set_timesteps(steps)
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / objective / "student" / "unet")
    img = sample(unet_fn(unet), sched, [0, 1], (1, 16, 16))
    assert img.shape == (2, 1, 16, 16) and torch.isfinite(img).all()


def test_teacher_init_copies_and_fewstep_settings_are_checked(wds_walk, tiny_teacher, tmp_path):
    from dkdm.distill.loop import distill

    walk_cache = wds_walk
    cfg = distill_cfg(tiny_teacher, walk_cache, tmp_path / "a", objective="trajectory", fewstep_steps=4)
    with pytest.raises(DkdmError, match="not on the cache's 6-step walk"):
        distill(cfg, progress=False)
    with pytest.raises(DkdmError, match="use it with --objective trajectory"):
        distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "g", objective="consistency", pair_starts="grid"),
                progress=False)
    with pytest.raises(DkdmError, match="composes with --objective eps only"):
        distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "b", objective="consistency", feature_kd=1.0), progress=False)
    with pytest.raises(DkdmError, match="teacher's architecture"):
        distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "c", student_init="teacher",
                            student=UNetSpec(**{**TINY.__dict__, "block_out_channels": (4, 8)})), progress=False)
    # eps matching from a teacher copy: step 0's loss is ~0 (the student IS the teacher on the teacher's own records)
    seen = {}
    distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "d", student_init="teacher", steps=1, lr=1e-9),
            progress=False, on_step=lambda step, micro, acc, student: seen.setdefault("b", micro[0]))
    t = load_unet(diffusers.UNet2DModel, tiny_teacher, "unet")
    with torch.no_grad():
        out = t(seen["b"].x, seen["b"].t).sample
    assert torch.allclose(out, seen["b"].eps, atol=2e-2)  # the records are this teacher's outputs (fp16)
    log = (tmp_path / "d" / "distill_log.csv").read_text().splitlines()
    assert float(log[1].split(",")[2]) < 1e-4
    # a warm start from that (eps) student: the few-step student begins as it, and its card says so
    eps_student = tmp_path / "d" / "student"
    distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "e", objective="trajectory", fewstep_steps=2,
                        student_init=str(eps_student), steps=1, lr=1e-9), progress=False)
    a = load_unet(diffusers.UNet2DModel, eps_student, "unet").state_dict()
    b = load_unet(diffusers.UNet2DModel, tmp_path / "e" / "student", "unet").state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    card = json.loads((tmp_path / "e" / "student" / "dkdm_student.json").read_text())
    src = json.loads((eps_student / "dkdm_student.json").read_text())
    assert card["student"]["init"]["student"] == str(eps_student) and card["student"]["init"]["objective"] == "eps"
    assert card["student"]["init"]["trained_on"] == src["trained_on"]
    with pytest.raises(DkdmError, match="architecture is not this run's"):
        distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "f", student_init=str(eps_student),
                            student=UNetSpec(**{**TINY.__dict__, "block_out_channels": (4, 8)})), progress=False)
    with pytest.raises(DkdmError, match="or a student folder"):
        distill(distill_cfg(tiny_teacher, walk_cache, tmp_path / "h", student_init=str(tmp_path / "nowhere")),
                progress=False)


def test_t2i_pairs_carry_the_guided_eps_and_the_student_samples_unguided(tmp_path):
    """builtin:digits-t2i-like (latent, paired records): a pair's state is the guided walk's, the endpoint is
    derived with e_u + g·(e_c - e_u), and the few-step student exports with guidance 1 (baked in, as LCM)."""
    from t2i_tiny import save_tiny_t2i

    from dkdm.cache.paths import assemble, paired_rows
    from dkdm.distill.loop import distill
    from dkdm.generate import generate

    teacher = save_tiny_t2i(tmp_path / "teacher")
    (tmp_path / "p.txt").write_text("a handwritten digit 7\nthe number two\n")
    cache = tmp_path / "cache"
    generate(gen_cfg(teacher, cache, trajectories=4, shard_size=2, batch_size=2, prompts=str(tmp_path / "p.txt"),
                     guidance_scale=3.0, sampler=SamplerConfig(steps=4, coverage="grid")), progress=False)
    reader = CacheReader(str(cache))
    u = paired_rows(reader.manifest, reader.store)
    shard = reader.manifest["shards"][0]
    blocks = list(reader.blocks(shard))
    p = assemble(blocks, reader.dtype, cache_sched(reader), 3, uncond_row=u, guidance_scale=3.0)
    assert p.num_trajectories == 2 and len(p.x) == 8 and not (p.cond == u).any()
    recs = {(m["traj"], m["step"], m["cond"] == u): (x, e)
            for x, _, e, m in backend.records(reader.store, shard, reader.dtype, reader.manifest)}
    x_c, e_c = recs[(1, 2, False)]
    x_u, e_u = recs[(1, 2, True)]
    assert torch.equal(x_c, x_u)  # both records of a step sit at the guided walk's state
    row = int(((p.traj == 1) & (p.step == 2)).nonzero())
    assert torch.allclose(p.eps[row], e_u + 3.0 * (e_c - e_u), atol=1e-5)
    cfg = DistillConfig(teacher=str(teacher), cache=str(cache), out=str(tmp_path / "run"), steps=2, batch_size=4,
                        shuffle_buffer=8, device="cpu", tracker="none", checkpoint_every=0, warmup_steps=1,
                        student=UNetSpec(block_out_channels=(16, 16), attention_levels=(0,), norm_num_groups=4,
                                         attention_head_dim=4),
                        objective="consistency", fewstep_steps=2, student_init="teacher")
    distill(cfg, progress=False)
    card = json.loads((tmp_path / "run" / "student" / "dkdm_student.json").read_text())
    assert card["sampling"]["guidance_scale"] == 1.0 and card["sampling"]["scheduler"] == "lcm"
    assert (tmp_path / "run" / "student" / "model_index.json").is_file()  # a full StableDiffusionPipeline folder


def test_consistency_distill_resumes_to_the_same_student(wds_walk, tiny_teacher, tmp_path):
    """Stopped after a checkpoint and resumed, a consistency run ends bit-identical to an unbroken one: the pair
    stream's position, the optimizer, the EMA and the EMA *target network* are all part of the checkpoint."""
    from safetensors.torch import load_file

    from dkdm.distill.loop import distill

    kw = dict(objective="consistency", fewstep_steps=2, student_init="teacher", steps=4, checkpoint_every=2,
              endpoint_weight=0.5, lr=1e-3)
    distill(distill_cfg(tiny_teacher, wds_walk, tmp_path / "a", **kw), progress=False)

    def stop(step, *_):
        if step == 2:
            raise RuntimeError("stopped for the test")

    with pytest.raises(RuntimeError, match="stopped for the test"):
        distill(distill_cfg(tiny_teacher, wds_walk, tmp_path / "b", **kw), progress=False, on_step=stop)
    assert (tmp_path / "b" / "checkpoints" / "step-00000002" / "data_objective_0.safetensors").is_file()
    distill(distill_cfg(tiny_teacher, wds_walk, tmp_path / "b", resume="latest", **kw), progress=False)
    a = load_file(str(tmp_path / "a" / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["bk-small", "transformer"])
def test_every_student_kind_learns_a_few_step_objective(wds_walk, tiny_teacher, tmp_path, kind):
    """A bk-* student (kept teacher weights copied) and a DiT train on pairs and sample at 2 LCM steps."""
    from dkdm.distill.loop import distill
    from dkdm.evaluate.models import load_student_unet

    seen = []
    res = distill(distill_cfg(tiny_teacher, wds_walk, tmp_path / kind, objective="consistency", fewstep_steps=2,
                              student_kind=kind, steps=3, endpoint_weight=1.0),
                  progress=False, on_step=lambda step, micro, *_: seen.append(type(micro[0]).__name__))
    assert seen == ["PairBatch"] * 3 and math.isfinite(res["final_loss"])
    card = json.loads((tmp_path / kind / "student" / "dkdm_student.json").read_text())
    assert card["sampling"]["scheduler"] == "lcm"
    if kind == "bk-small":
        assert card["student"]["removed"] == ["mid"]
    m = load_student_unet(str(tmp_path / kind))
    sched = diffusers.LCMScheduler.from_pretrained(tmp_path / kind / "student" / "scheduler")
    sched.set_timesteps(2)
    img = sample(unet_fn(m), sched, [0, 1], (1, 16, 16))
    assert img.shape == (2, 1, 16, 16) and torch.isfinite(img).all()
