"""Issue 19 (figures a team can trust): the loader with more workers than shards, the live pool's own
generators, resume checks, messages. Real tiny models and caches from conftest."""

from __future__ import annotations

import signal
import warnings

import pytest
import torch

from dkdm.cache.reader import CacheReader, idle_workers
from dkdm.config import SamplerConfig
from dkdm.distill.pool import TeacherPool
from dkdm.schedulers import make_scheduler
from dkdm.teacher import load_teacher


class _Timeout(Exception):
    pass


def _alarm(seconds):
    def handler(*_):
        raise _Timeout(f"no batch within {seconds} s: the loader hangs")

    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


def test_more_loader_workers_than_shards_does_not_hang(tiny_cache):
    """Issue 19.3: 3 shards, 4 workers: the worker without a shard ends at once; batches keep coming, with a warning."""
    reader = CacheReader(str(tiny_cache))
    assert len(reader.manifest["shards"]) == 3 and idle_workers(3, 1, 4) == 1 and idle_workers(3, 2, 3) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = reader.loader(4, num_workers=4, shuffle_buffer=8, seed=0)
    assert any("1 worker(s) per rank get no shard" in str(w.message) for w in caught)
    _alarm(120)
    try:
        it = iter(loader)
        trajs = [next(it)[0] for _ in range(30)]  # 30 batches of 4 = 2 epochs of the 60 records
    finally:
        signal.alarm(0)
    assert len(trajs) == 30 and all(x.shape == (4, 1, 16, 16) for x in trajs)


def test_every_rank_reads_when_workers_outnumber_a_ranks_shards(tiny_cache):
    """Ranks split the shards first: rank 1 of 2 has 1 shard and 3 workers, and still streams records."""
    reader = CacheReader(str(tiny_cache))
    _alarm(120)
    try:
        it = iter(reader.loader(4, num_workers=3, shuffle_buffer=8, seed=0, rank=1, world=2))
        batches = [next(it) for _ in range(6)]
    finally:
        signal.alarm(0)
    assert sum(len(b[0]) for b in batches) == 24


def _pool(teacher, sched, **kw):
    return TeacherPool(teacher, sched, "ddpm", "dynamic", 4, rho=0.4, seed=3, rank=1, **kw)


def test_pool_step_noise_is_its_own_and_saved(tiny_teacher):
    """Issue 19.5: with DDPM the pool's step noise does not come from the process RNG, and a saved pool resumes exactly."""
    teacher = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(scheduler="ddpm", steps=4), teacher.scheduler_config)

    def run(global_seed, pool=None, n=3):
        torch.manual_seed(global_seed)  # what init and dropout use; it must not touch the pool
        pool = pool or _pool(teacher, sched)
        return [pool.draw()[0].clone() for _ in range(n)], pool

    a, pa = run(0)
    b, _ = run(12345)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    state = pa.state_dict()
    more, _ = run(1, pa)
    again = _pool(teacher, sched, lazy=True)
    again.load_state_dict(state)
    resumed, _ = run(2, again)
    assert all(torch.equal(x, y) for x, y in zip(more, resumed))
    assert "noise_gen" in state and "gen" in state


def _digests(log):
    import hashlib

    def on_step(step, micro, acc, student):
        for b in micro:
            h = hashlib.sha256()
            for t in (b.x, b.t, b.eps, b.teacher_out):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            log[step] = h.hexdigest()
    return on_step


class _Crash(Exception):
    pass


def test_crash_late_then_resume_gives_the_same_next_batches(tiny_cache, tmp_path):
    """Issue 19.4: crash at step 23 of 28 (the 4th pass over the 60-record cache), resume from the step-20 checkpoint:
    every later batch is bit-identical to the uninterrupted run's; another --num-workers is refused in one line."""
    from dkdm.distill.loop import distill
    from dkdm.errors import DkdmError
    from test_distill import dcfg

    kw = dict(cache=str(tiny_cache), teacher="", steps=28, checkpoint_every=10, num_workers=2, shuffle_buffer=16)
    full = {}
    distill(dcfg(tmp_path / "full", **kw), progress=False, on_step=_digests(full))
    crashed = {}
    hook = _digests(crashed)

    def crash_at_23(step, micro, acc, student):
        hook(step, micro, acc, student)
        if step == 23:
            raise _Crash  # like kill -9: nothing saved after the step-20 checkpoint
    with pytest.raises(_Crash):
        distill(dcfg(tmp_path / "run", **kw), progress=False, on_step=crash_at_23)
    with pytest.raises(DkdmError, match=r"other settings \(num_workers\)"):
        distill(dcfg(tmp_path / "run", **{**kw, "num_workers": 1}, resume="latest"),
                progress=False)
    resumed = {}
    res = distill(dcfg(tmp_path / "run", **kw, resume="latest"), progress=False, on_step=_digests(resumed))
    assert res["start_step"] == 20 and sorted(resumed) == list(range(20, 28))
    assert all(resumed[s] == full[s] for s in resumed) and all(crashed[s] == full[s] for s in crashed)


def test_sample_leaves_the_callers_scheduler_alone(tiny_teacher):
    """Issue 19.7: a multistep scheduler keeps state; sample() must not step the caller's object."""
    from dkdm.sampling import sample

    teacher = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(scheduler="dpm++", steps=4, timestep_spacing="leading"), teacher.scheduler_config)
    before = (sched.step_index, sched.lower_order_nums, sched.timesteps.clone())
    a = sample(teacher, sched, [0, 1], teacher.sample_shape)
    assert (sched.step_index, sched.lower_order_nums) == before[:2] and torch.equal(sched.timesteps, before[2])
    assert torch.equal(a, sample(teacher, sched, [0, 1], teacher.sample_shape))


def test_kl_tables_are_looked_up_on_the_device_once(tiny_teacher):
    """Issue 19.7: the KL's float64 tables stay on the device; a call makes one index copy per posterior, not five."""
    from torch.overrides import TorchFunctionMode

    from dkdm.distill.losses import kl_learned_variance
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    s_out, t_out = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    kl_learned_variance(s_out, t_out, x, t, sched, 1)  # builds the tables

    class CountTo(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to:
                CountTo.n += 1
            return func(*args, **(kwargs or {}))

    with CountTo():
        kl_learned_variance(s_out, t_out, x, t, sched, 1)
    assert CountTo.n <= 2  # was 12: 2 posteriors x (1 index copy + 5 table copies)


def test_bf16_records_warn(tiny_teacher, tmp_path):
    from conftest import gen_cfg
    from dkdm.generate import validate

    with pytest.warns(UserWarning, match="bfloat16 .* lose the eps signal"):
        validate(gen_cfg(tiny_teacher, tmp_path / "c", dtype="bfloat16"))


def test_grad_clip_is_a_setting(tiny_cache, tmp_path):
    from dkdm.distill.loop import distill
    from dkdm.errors import DkdmError
    from test_distill import dcfg

    with pytest.raises(DkdmError, match="--grad-clip"):
        distill(dcfg(tmp_path, cache=str(tiny_cache), teacher="", grad_clip=-1.0), progress=False)
    # runs are deterministic: the two losses differ only if the setting reaches the optimizer step
    a = distill(dcfg(tmp_path / "a", cache=str(tiny_cache), teacher="", steps=2, grad_clip=1e-6, lr_schedule="constant",
                     export_ema=False), progress=False)
    b = distill(dcfg(tmp_path / "b", cache=str(tiny_cache), teacher="", steps=2, grad_clip=0.0, lr_schedule="constant",
                     export_ema=False), progress=False)
    assert a["final_loss"] != b["final_loss"]


def test_diffusers_version_is_part_of_the_cache(tiny_teacher, tmp_path, monkeypatch):
    """Issue 19.7: a resumed generate after a diffusers upgrade is refused instead of mixing shards."""
    import json

    import diffusers

    from conftest import gen_cfg
    from dkdm.errors import DkdmError
    from dkdm.generate import generate

    out = tmp_path / "c"
    generate(gen_cfg(tiny_teacher, out, trajectories=4), progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["software"] == {"diffusers": diffusers.__version__}
    monkeypatch.setattr(diffusers, "__version__", "99.0.0")
    with pytest.raises(DkdmError, match=f"generated with diffusers {m['software']['diffusers']}, this is 99.0.0"):
        generate(gen_cfg(tiny_teacher, out, trajectories=8), progress=False)
    # a cache whose manifest predates the field still reads
    del m["software"]
    (out / "manifest.json").write_text(json.dumps(m))
    assert CacheReader(str(out)).manifest["cache_id"] == m["cache_id"]


def test_a_damaged_tar_shard_is_named_in_one_clean_line(tiny_cache):
    """Issue 19.9: webdataset appends (stream, url) and ' @ <_io.BytesIO ...>' to its errors: the refusal shows neither."""
    from dkdm.cache.wds_backend import iter_shard_blocks
    from dkdm.errors import BadShardError

    data = (tiny_cache / "shards" / "traj-000000.tar").read_bytes()
    with pytest.raises(BadShardError) as err:
        list(iter_shard_blocks(data[:1546], f"{tiny_cache}/shards/traj-000000.tar"))  # inside the 2nd member
    msg = str(err.value)
    assert "shards/traj-000000.tar" in msg and "BytesIO" not in msg and "0x" not in msg and "\n" not in msg
    assert len(msg) < 200 + len(str(tiny_cache)), msg


def test_seal_refuses_to_drop_listed_shards_unless_forced(tiny_teacher, tmp_path):
    """Issue 19.9: a seal that would lose shards the manifest lists exits non-zero and writes nothing; --force warns."""
    import json

    from conftest import gen_cfg, run_cli
    from dkdm.generate import generate

    c = tmp_path / "c"
    generate(gen_cfg(tiny_teacher, c), progress=False)
    before = (c / "manifest.json").read_text()
    for g in range(3):
        (c / "shards" / f"traj-00000{g}.json").unlink()  # e.g. foreign or lost sidecars: nothing left to index
    r = run_cli("cache", "seal", c)
    assert r.returncode == 2 and "would drop 3 of its 3 shards" in r.stderr and "manifest.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and (c / "manifest.json").read_text() == before
    r = run_cli("cache", "seal", c, "--force")
    assert r.returncode == 0 and "dropped 3 shard(s)" in r.stderr and "0 shards" in r.stdout
    assert json.loads((c / "manifest.json").read_text())["shards"] == []


def test_forged_pool_state_is_refused(tiny_teacher):
    from dkdm.errors import DkdmError

    teacher = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(steps=5), teacher.scheduler_config)
    pool = TeacherPool(teacher, sched, "ddim", "shuffled", 4, coverage="offsets")
    for key, value, msg in (("idx", 99, "step indices"), ("shift", -5000, "shifts move timesteps"),
                            ("x", float("nan"), "not finite")):
        state = pool.state_dict()
        state[key][0] = value
        with pytest.raises(DkdmError, match=msg):
            TeacherPool(teacher, sched, "ddim", "shuffled", 4, coverage="offsets", lazy=True).load_state_dict(state)
