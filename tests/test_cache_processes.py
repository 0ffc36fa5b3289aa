"""Real processes: two accelerate ranks fill one cache; a writer killed with SIGKILL resumes exactly."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dkdm.cache import backend
from dkdm.cache.inspect import verify
from dkdm.cache.manifest import read_manifest
from dkdm.cache.reader import CacheReader
from dkdm.cache import store as store_mod
from dkdm.cache.store import Store

from dkdm.generate import generate

from conftest import gen_cfg, run_cli

GEN = ["--trajectories", "12", "--shard-size", "4", "--batch-size", "4", "--steps", "5", "--coverage", "grid", "--device", "cpu", "--quiet"]


def launch_generate(teacher, out, args, env):
    """`dkdm generate` under `accelerate launch` with two processes on this host (STACK-NOTES: --multi_gpu on CPU)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "dkdm.cli", "generate", "--teacher", str(teacher), "--out", str(out), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def shard_hashes(cache):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((cache / "shards").glob("traj-*.tar"))}


def test_two_processes_fill_one_cache(tiny_teacher, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): each rank writes its shards, rank 0 seals;
    the shards are bit-identical to a single writer's at the same CPU thread count (1 per rank here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU kernels may round differently with another thread count
    try:
        generate(gen_cfg(tiny_teacher, tmp_path / "one"), progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "c"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = launch_generate(tiny_teacher, out, GEN, env)
    # rank 0 owns shards 0 and 2, rank 1 owns shard 1: rank 0 reports its own two
    assert "wrote 2 shards" in res.stdout and "60 records in total" in res.stdout
    m = read_manifest(Store(out))
    assert m["totals"]["records"] == 60 and [s["index"] for s in m["shards"]] == [0, 1, 2]
    assert shard_hashes(out) == shard_hashes(tmp_path / "one")
    assert verify(str(out)) == []


def test_kill_9_then_resume(tiny_teacher, tmp_path):
    """SIGKILL a zarr writer after its first complete shard; re-running finishes with every record exactly once."""
    out = tmp_path / "c"
    args = ["generate", "--teacher", str(tiny_teacher), "--out", str(out), "--format", "zarr",
            "--trajectories", "16", "--shard-size", "2", "--batch-size", "2", "--steps", "5", "--device", "cpu", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dkdm.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not list((out / "shards").glob("traj-*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    done_before = len(list((out / "shards").glob("traj-*.json")))
    assert 1 <= done_before < 8
    assert read_manifest(Store(out))["totals"]["records"] == 0  # never sealed: nothing is advertised yet
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"skipped {done_before} complete" in res.stdout
    m = read_manifest(Store(out))
    assert m["totals"]["records"] == 16 * 5 and m["totals"]["shards"] == 8
    keys = []
    r = CacheReader(str(out))
    for shard in m["shards"]:
        keys += [(meta["traj"], meta["step"]) for _, _, meta in backend.raw_records(r.store, shard)]
    assert len(keys) == len(set(keys)) == 80
    assert sorted({k[0] for k in keys}) == list(range(16))
    assert verify(str(out), deep=True) == []
    assert np.unique([k[1] for k in keys], return_counts=True)[1].tolist() == [16] * 5


def test_two_writers_with_the_default_device(tiny_teacher, tmp_path):
    """Issue 19.1: `accelerate launch --multi_gpu` on a CPU host with the default --device auto (no
    ACCELERATE_USE_CPU): the ranks are real ranks (1 and 2 shards), not two rank 0s deleting each other's temp files."""
    out = tmp_path / "c"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    gen = [a for a in GEN if a not in ("--device", "cpu")]
    res = launch_generate(tiny_teacher, out, gen, env)
    assert "wrote 2 shards" in res.stdout and "60 records in total" in res.stdout
    sidecars = [json.loads((out / "shards" / f"traj-00000{g}.json").read_text()) for g in range(3)]
    assert [s["made_on"]["rank"] for s in sidecars] == [0, 1, 0] and {s["made_on"]["world"] for s in sidecars} == {2}
    assert not list((out / "shards").glob(".tmp-*")) and verify(str(out)) == []


def test_a_launched_process_that_sees_a_world_of_1_is_refused(tiny_teacher, tmp_path, monkeypatch):
    from dkdm.config import EvaluateConfig
    from dkdm.errors import DkdmError
    from dkdm.evaluate.run import evaluate
    from dkdm.runtime import check_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in ("generate", "distill", "evaluate"):
        with pytest.raises(DkdmError, match="WORLD_SIZE=2"):
            check_world(1, command)
    with pytest.raises(DkdmError, match="WORLD_SIZE=2"):
        generate(gen_cfg(tiny_teacher, tmp_path / "c"), rank=0, world=1, progress=False)
    with pytest.raises(DkdmError, match="evaluate runs in one process"):
        evaluate(EvaluateConfig(teacher=str(tiny_teacher), students=[str(tiny_teacher)], out=str(tmp_path / "ev")), progress=False)
    check_world(2, "generate")  # a real world of 2 is fine
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world(1, "generate")


def test_stale_temp_cleanup_spares_a_live_writer(tmp_path):
    """Issue 19.1: a writer removes a crashed run's temp file of its shard, never another live writer's."""
    store = Store(str(tmp_path / "c"))
    live = store.temp_file("shards", ".tar", owner="traj-000000")  # this (live) process's file
    Path(live).write_bytes(b"x")
    dead = tmp_path / "c" / "shards" / f".tmp-traj-000000-{store_mod._HOST}-{_dead_pid()}-abcd.tar"
    dead.write_bytes(b"x")
    old = tmp_path / "c" / "shards" / ".tmp-traj-000000-abcd.tar"  # an older dkdm's name, written before this process
    old.write_bytes(b"x")
    os.utime(old, (store.opened - 60, store.opened - 60))
    fresh = tmp_path / "c" / "shards" / ".tmp-traj-000000-otherhost-123-abcd.tar"  # another host, written just now
    fresh.write_bytes(b"x")
    again = store.temp_file("shards", ".tar", owner="traj-000000")
    assert Path(live).exists() and fresh.exists() and Path(again).exists()
    assert not dead.exists() and not old.exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
