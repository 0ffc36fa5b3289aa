"""A cache on object storage: write to and read from a real S3 API (moto's server on loopback), never a mocked client."""

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from dkdm.cache.inspect import info, verify
from dkdm.cache.reader import CacheReader
from dkdm.generate import generate

from conftest import gen_cfg, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    exe = shutil.which("moto_server")
    assert exe, "moto[server] is a test dependency (pyproject [test])"
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists("dkdm-test"):
        fs.mkdir("dkdm-test")
    return env


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_s3_round_trip(s3_env, tiny_teacher, tiny_cache, tmp_path, fmt):
    url = f"s3://dkdm-test/{fmt}/c1"
    cfg = gen_cfg(tiny_teacher, url, format=fmt, trajectories=8)
    first = generate(cfg, progress=False)
    assert first["total_records"] == 40 and first["shards_written"] == 2
    again = generate(cfg, progress=False)  # resuming against the bucket: nothing to redo
    assert again["shards_written"] == 0 and again["shards_skipped"] == 2
    assert verify(url, deep=True) == []
    assert info(url)["records"] == 40
    r = CacheReader(url)
    got = [(t, x.sum().item()) for s in r.manifest["shards"] for x, t, _ in r.records(s)]
    local = CacheReader(str(tiny_cache))
    want = [(t, x.sum().item()) for s in local.manifest["shards"][:2] for x, t, _ in local.records(s)]
    assert sorted(got) == sorted(want)  # the bucket holds the same records as the local cache
    batch = next(iter(r.loader(8, shuffle_buffer=16)))
    assert batch[0].shape == (8, 1, 16, 16)
    if fmt == "wds":  # the CLI reads the bucket from the usual AWS_* settings alone
        res = run_cli("cache", "verify", url, env=s3_env)
        assert res.returncode == 0, res.stderr[-2000:]


def test_s3_trajectory_pairs_match_local(s3_env, tiny_teacher, tmp_path):
    """The few-step pair stream reads an s3:// cache through the same Store: the same batches as a local copy."""
    import diffusers
    import torch

    from dkdm.cache.paths import PairStream
    from dkdm.config import SamplerConfig

    kw = dict(trajectories=8, sampler=SamplerConfig(steps=4, coverage="grid"))
    generate(gen_cfg(tiny_teacher, tmp_path / "local", **kw), progress=False)
    generate(gen_cfg(tiny_teacher, "s3://dkdm-test/pairs", **kw), progress=False)

    def batches(url):
        r = CacheReader(url)
        m = r.manifest["scheduler"]
        sched = getattr(diffusers, m["class"]).from_config(m["config"])
        sched.set_timesteps(4)
        return list(PairStream(r, 4, sched, 2, shuffle_buffer=8, seed=0, epochs=1))

    a, b = batches(str(tmp_path / "local")), batches("s3://dkdm-test/pairs")
    assert len(a) == len(b) == 6  # 8 trajectories x 3 pairs (jump 2 over 4 states + endpoint), batches of 4
    assert all(torch.equal(u, v) for x, y in zip(a, b) for u, v in zip(x, y))
