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
