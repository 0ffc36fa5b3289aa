"""Timestep coverage of caches and live pools: offsets cover every training timestep at the grid's cost."""

from __future__ import annotations

import json

import pytest
import torch

from dkdm import coverage
from dkdm.cache.inspect import verify
from dkdm.cache.reader import CacheReader
from dkdm.config import SamplerConfig
from dkdm.distill.pool import TeacherPool
from dkdm.errors import DkdmError
from dkdm.generate import generate
from dkdm.schedulers import make_scheduler
from dkdm.teacher import load_teacher

from conftest import gen_cfg, run_cli


def cached_ts(url) -> list[int]:
    r = CacheReader(str(url))
    return [t for s in r.manifest["shards"] for _, t, _ in r.records(s)]


def test_offsets_cover_all_timesteps_at_the_grid_cost(tiny_teacher, tmp_path):
    """25-step trailing DDIM has stride 40; 40 trajectories walk 40 shifted grids: 1000 timesteps, 25 forwards each."""
    res = generate(gen_cfg(tiny_teacher, tmp_path / "o", trajectories=40, shard_size=20, batch_size=20,
                           sampler=SamplerConfig(steps=25, coverage="offsets"), keep="all"), progress=False)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    s = m["sampler"]
    assert s["coverage"] == "offsets" and s["offsets"] == [-o for o in range(40)]
    assert s["covered_timesteps"] == list(range(1000))
    ts = cached_ts(tmp_path / "o")
    assert len(ts) == 40 * 25 == res["total_records"]  # same teacher forwards as a grid cache
    assert sorted(ts) == list(range(1000))
    assert verify(str(tmp_path / "o")) == []


def test_offset_trajectory_is_the_grid_walk_shifted(tiny_teacher, tmp_path):
    """Trajectory 3 of an offsets cache = a batch-of-one DDIM walk over grid-3 from the same seed."""
    generate(gen_cfg(tiny_teacher, tmp_path / "o", trajectories=4, shard_size=4, batch_size=4, dtype="float32",
                     sampler=SamplerConfig(steps=5, coverage="offsets")), progress=False)
    r = CacheReader(str(tmp_path / "o"))
    rows = [(x, t) for x, t, _ in r.records(r.manifest["shards"][0])]
    traj3 = [(x, t) for x, t in rows if t % 200 == 199 - 3]
    assert [t for _, t in traj3] == [996, 796, 596, 396, 196]
    teacher = load_teacher(str(tiny_teacher), "cpu")
    sched = make_scheduler(SamplerConfig(steps=5), teacher.scheduler_config)
    from dkdm.sampling import initial_noise, trajectory_seed
    from dkdm.schedulers import step
    x, _ = initial_noise([trajectory_seed(0, 3)], teacher.sample_shape)
    for (xc, t) in traj3:
        assert torch.allclose(xc, x[0], atol=1e-5), t
        x = step(sched, teacher(x, t), t, x, guided_ddim=True)


def test_grid_keeps_the_old_behaviour_and_is_another_cache(tiny_teacher, tmp_path):
    generate(gen_cfg(tiny_teacher, tmp_path / "g", trajectories=4, sampler=SamplerConfig(steps=5, coverage="grid")),
             progress=False)
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert m["sampler"]["covered_timesteps"] == [199, 399, 599, 799, 999]
    assert sorted(set(cached_ts(tmp_path / "g"))) == [199, 399, 599, 799, 999]
    with pytest.raises(DkdmError, match="already holds cache"):
        generate(gen_cfg(tiny_teacher, tmp_path / "g", trajectories=4, sampler=SamplerConfig(steps=5, coverage="offsets")),
                 progress=False)


def test_full_walks_the_ddpm_chain():
    s = coverage.sampler_for(SamplerConfig(steps=25, coverage="full"), 1000)
    assert (s.scheduler, s.steps) == ("ddpm", 1000)
    with pytest.raises(DkdmError, match="offsets"):
        coverage.sampler_for(SamplerConfig(scheduler="dpm++", coverage="offsets"), 1000)
    with pytest.raises(DkdmError, match="unknown coverage"):
        coverage.sampler_for(SamplerConfig(coverage="most"), 1000)
    # leading spacing reaches t=0: shifts go up instead of down
    assert coverage.covered_timesteps("offsets", [800, 600, 400, 200, 0], 1000) == list(range(1000))


def test_verify_flags_records_off_the_covered_timesteps(tiny_teacher, tmp_path):
    generate(gen_cfg(tiny_teacher, tmp_path / "g", trajectories=4), progress=False)
    mp = tmp_path / "g" / "manifest.json"
    m = json.loads(mp.read_text())
    m["sampler"]["covered_timesteps"] = [999]
    mp.write_text(json.dumps(m))
    assert any("not among the cache's covered timesteps" in p for p in verify(str(tmp_path / "g")))


def test_live_pool_with_offsets_visits_shifted_timesteps(tiny_teacher):
    teacher = load_teacher(str(tiny_teacher), "cpu")
    sched = make_scheduler(SamplerConfig(steps=5), teacher.scheduler_config)
    pool = TeacherPool(teacher, sched, "ddim", "shuffled", 8, coverage="offsets", noise_seed_base=1)
    seen = set()
    for _ in range(12):
        _, t, _ = pool.draw()
        seen.update(t.tolist())
    assert len(seen) > 5 and seen <= set(coverage.covered_timesteps("offsets", sched.timesteps, 1000))
    state = pool.state_dict()
    again = TeacherPool(teacher, sched, "ddim", "shuffled", 8, coverage="offsets", noise_seed_base=1, lazy=True)
    again.load_state_dict(state)
    assert torch.equal(again.shift, pool.shift) and again.started == pool.started


def test_cli_generate_coverage_flag(tiny_teacher, tmp_path):
    r = run_cli("generate", "--teacher", tiny_teacher, "--out", tmp_path / "c", "--trajectories", 2, "--steps", 3,
                "--coverage", "grid", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["sampler"]["coverage"] == "grid"
