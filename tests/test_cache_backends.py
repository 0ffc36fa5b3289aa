"""Both shard backends behind one reader: same records, verified bytes, plain-library readability, many writers."""

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dkdm.cache.inspect import info, verify
from dkdm.cache.manifest import read_manifest, seal
from dkdm.cache.reader import CacheReader
from dkdm.cache.store import Store
from dkdm.errors import DkdmError
from dkdm.generate import generate

from conftest import gen_cfg, run_cli


@pytest.fixture(scope="session")
def zarr_cache(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("zcache") / "z"
    generate(gen_cfg(tiny_teacher, out, format="zarr"), progress=False)
    return out


def all_records(url):
    """{(traj, step): (t, x_t bytes, target bytes)} read through the dkdm reader (storage dtype bytes)."""
    from dkdm.cache import backend

    r = CacheReader(str(url))
    out = {}
    for shard in r.manifest["shards"]:
        for x, target, meta in backend.raw_records(r.store, shard):
            key = (meta["traj"], meta["step"])
            assert key not in out, f"duplicate record {key}"
            out[key] = (meta["t"], np.asarray(x).tobytes(), np.asarray(target).tobytes())
    return out


def zarr_file_hashes(cache):
    root = cache / "trajectories.zarr"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_zarr_holds_the_same_records_as_tar(zarr_cache, tiny_cache):
    m = read_manifest(Store(zarr_cache))
    assert m["layout"]["backend"] == "zarr" and m["totals"]["records"] == 60 and m["totals"]["shards"] == 3
    assert m["cache_id"] == read_manifest(Store(tiny_cache))["cache_id"]  # same teacher and settings: same cache
    assert verify(str(zarr_cache), deep=True) == []
    z, w = all_records(zarr_cache), all_records(tiny_cache)
    assert len(z) == 60 and z == w
    i = info(str(zarr_cache))
    assert i["backend"] == "zarr" and i["records"] == 60
    # fp16 halves fp32; the codec must not make it bigger than that
    assert i["bytes_per_record"] <= 0.5 * i["raw_fp32_bytes_per_record"]


def test_plain_zarr_and_webdataset_read_without_dkdm(zarr_cache, tiny_cache, tmp_path):
    """The snippets of docs/cache-format.md, run in a fresh interpreter that never imports dkdm."""
    code = f'''
import json, sys
import numpy as np, webdataset as wds, zarr
m = json.load(open("{zarr_cache}/manifest.json"))
root = zarr.open_group("{zarr_cache}/trajectories.zarr", mode="r")
x, t, traj, step = root["x_t"][:], root["t"][:], root["traj"][:], root["step"][:]
assert x.shape == (60, 1, 16, 16) and x.dtype == np.float16, (x.shape, x.dtype)
assert len(set(zip(traj.tolist(), step.tolist()))) == 60 and (t >= 0).all()
ds = wds.WebDataset("{tiny_cache}/shards/traj-{{000000..000002}}.tar", shardshuffle=False).decode()
recs = {{}}
for s in ds:  # one sample = one block of records (one teacher batch at one step)
    meta = s["meta.json"]
    for j, key in enumerate(zip(meta["traj"], meta["step"])):
        recs[key] = s["x_t.npy"][j]
assert len(recs) == 60
for i in range(60):
    assert np.array_equal(recs[(int(traj[i]), int(step[i]))], x[i])
assert not any(name == "dkdm" or name.startswith("dkdm.") for name in sys.modules)
print("ok", m["totals"]["records"])
'''
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok 60"


def test_many_writers_fill_one_zarr_cache_bit_identically(zarr_cache, tiny_teacher, tmp_path):
    """Three uncoordinated writers (shard g goes to rank g mod 3), then `seal`: same files as one writer."""
    out = tmp_path / "z"
    for rank in (2, 0, 1):
        generate(gen_cfg(tiny_teacher, out, format="zarr"), rank=rank, world=3, progress=False)
    m = seal(Store(out))
    assert m["totals"]["records"] == 60 and m["totals"]["shards"] == 3
    assert zarr_file_hashes(out) == zarr_file_hashes(zarr_cache)
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in read_manifest(Store(zarr_cache))["shards"]]
    again = generate(gen_cfg(tiny_teacher, out, format="zarr"), progress=False)  # idempotent
    assert again["shards_written"] == 0 and again["shards_skipped"] == 3


def test_tampered_zarr_shard_is_named_and_refused(zarr_cache, tmp_path):
    out = tmp_path / "z"
    shutil.copytree(zarr_cache, out)
    f = out / "trajectories.zarr" / "target" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    problems = verify(str(out))
    assert len(problems) == 1 and "traj-000001" in problems[0] and "target/c/1" in problems[0]
    res = run_cli("cache", "verify", out)
    assert res.returncode == 1 and "traj-000001" in res.stderr and "Traceback" not in res.stderr
    r = CacheReader(str(out))
    with pytest.raises(DkdmError, match="traj-000001"):
        list(r.records(r.manifest["shards"][1]))
    with pytest.warns(UserWarning, match="traj-000001"):
        assert list(r.records(r.manifest["shards"][1], on_bad="skip")) == []
    assert len(list(r.records(r.manifest["shards"][0]))) == 20  # the intact shards still read


def test_foreign_teacher_zarr_cache_is_refused(zarr_cache, other_teacher):
    from dkdm.teacher import load_teacher

    with pytest.raises(DkdmError, match="refusing to mix teachers"):
        CacheReader(str(zarr_cache), expect_fingerprint=load_teacher(str(other_teacher)).fingerprint)


def test_gzipped_tar_shards(tiny_cache, tiny_teacher, tmp_path):
    """`--format wds-gz`: same records, fewer bytes, bit-identical on re-generation, plain webdataset reads it."""
    import webdataset as wds

    out = tmp_path / "g"
    generate(gen_cfg(tiny_teacher, out, format="wds-gz", trajectories=8), progress=False)
    m = read_manifest(Store(out))
    assert [s["file"] for s in m["shards"]] == ["traj-000000.tar.gz", "traj-000001.tar.gz"]
    assert verify(str(out), deep=True) == []
    got = all_records(out)
    ref = {k: v for k, v in all_records(tiny_cache).items() if k[0] < 8}
    assert got == ref
    assert info(str(out))["bytes_per_record"] < 0.5 * info(str(tiny_cache))["bytes_per_record"]
    samples = list(wds.WebDataset(str(out / "shards" / "traj-000001.tar.gz"), shardshuffle=False).decode())
    assert len(samples) == 5 and samples[0]["x_t.npy"].dtype == np.float16
    assert sum(len(s["x_t.npy"]) for s in samples) == 20
    first = {s["file"]: s["sha256"] for s in m["shards"]}
    shutil.rmtree(out)
    generate(gen_cfg(tiny_teacher, out, format="wds-gz", trajectories=8), progress=False)
    assert {s["file"]: s["sha256"] for s in read_manifest(Store(out))["shards"]} == first


def test_unknown_format_is_refused(tiny_teacher, tmp_path):
    with pytest.raises(DkdmError, match="unknown cache format 'parquet'"):
        generate(gen_cfg(tiny_teacher, tmp_path / "c", format="parquet"), progress=False)
    assert not (tmp_path / "c").exists()


def test_distiller_streams_a_zarr_cache_without_knowing_the_backend(zarr_cache, tiny_teacher, tmp_path):
    from dkdm.config import DistillConfig, UNetSpec
    from dkdm.distill.loop import distill

    cfg = DistillConfig(teacher=str(tiny_teacher), cache=str(zarr_cache), out=str(tmp_path / "run"), steps=2, batch_size=8,
                        shuffle_buffer=16, num_workers=0, device="cpu", log_every=1,
                        student=UNetSpec(block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4))
    res = distill(cfg, progress=False)
    assert res["steps"] == 2 and np.isfinite(res["final_loss"])
