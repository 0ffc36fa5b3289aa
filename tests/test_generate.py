import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from dkdm.cache.inspect import info, verify
from dkdm.cache.manifest import read_manifest
from dkdm.cache.reader import CacheReader
from dkdm.cache.store import Store
from dkdm.errors import DkdmError
from dkdm.generate import generate, parse_keep

from conftest import gen_cfg


def shard_hashes(cache):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((cache / "shards").glob("traj-*.tar"))}


def test_cache_layout_and_manifest(tiny_cache, tiny_teacher):
    m = read_manifest(Store(tiny_cache))
    assert m["format"] == "dkdm-cache/2"
    assert m["totals"]["records"] == 12 * 5 and m["totals"]["shards"] == 3 and m["totals"]["trajectories"] == 12
    assert m["record"]["x_t"] == {"shape": [1, 16, 16], "dtype": "float16"}
    assert m["sampler"]["steps"] == 5 and len(m["sampler"]["timesteps"]) == 5
    for s in m["shards"]:
        side = json.loads((tiny_cache / "shards" / f"{s['name']}.json").read_text())
        assert side["sha256"] == s["sha256"] == hashlib.sha256((tiny_cache / "shards" / s["file"]).read_bytes()).hexdigest()
    assert sum(m["totals"]["t_hist"].values()) == 60 and len(m["totals"]["t_hist"]) == 5
    assert verify(str(tiny_cache), deep=True) == []


def test_records_match_the_teacher(tiny_cache, tiny_teacher):
    """A record's target is the teacher's output at its x_t, t (up to fp16 storage)."""
    from dkdm.teacher import load_teacher

    teacher = load_teacher(str(tiny_teacher))
    r = CacheReader(str(tiny_cache), expect_fingerprint=teacher.fingerprint)
    x, t, target = next(r.records(r.manifest["shards"][0]))
    expect = teacher(x[None], t)[0]
    assert (expect - target).abs().max() < 2e-2
    keys = set()
    for shard in r.manifest["shards"]:
        for x, t, target in r.records(shard):
            keys.add((float(x.sum()), t))
    assert len(keys) == 60  # every record distinct


def test_bit_identical_regeneration(tiny_cache, tiny_teacher, tmp_path):
    generate(gen_cfg(tiny_teacher, tmp_path / "again"), progress=False)
    assert shard_hashes(tiny_cache) == shard_hashes(tmp_path / "again")


def test_resume_after_interruption_writes_only_missing(tiny_cache, tiny_teacher, tmp_path):
    out = tmp_path / "c"
    first = generate(gen_cfg(tiny_teacher, out), progress=False, stop_after_shards=1)
    assert first["shards_written"] == 1
    # a crash mid-shard leaves a temp file and no sidecar: it must not count
    (out / "shards" / ".tmp-crashed.tar").write_bytes(b"partial")
    done = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("traj-*.tar")}
    second = generate(gen_cfg(tiny_teacher, out), progress=False)
    assert second["shards_skipped"] == 1 and second["shards_written"] == 2
    assert all((out / "shards" / n).stat().st_mtime_ns == t for n, t in done.items())
    assert read_manifest(Store(out))["totals"]["records"] == 60
    assert shard_hashes(out) == shard_hashes(tiny_cache)


def test_shard_without_sidecar_is_regenerated(tiny_cache, tiny_teacher, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(tiny_cache, out)
    (out / "shards" / "traj-000001.json").unlink()
    (out / "shards" / "traj-000001.tar").write_bytes(b"half a shard")
    res = generate(gen_cfg(tiny_teacher, out), progress=False)
    assert res["shards_written"] == 1
    assert shard_hashes(out) == shard_hashes(tiny_cache)


def test_other_settings_refuse_existing_cache(tiny_cache, tiny_teacher, other_teacher, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(tiny_cache, out)
    with pytest.raises(DkdmError, match="already holds cache"):
        generate(gen_cfg(other_teacher, out), progress=False)
    with pytest.raises(DkdmError, match="already holds cache"):
        generate(gen_cfg(tiny_teacher, out, sampler=gen_cfg(tiny_teacher, out).sampler.__class__(steps=6, coverage="grid")), progress=False)


def test_non_cache_folder_is_not_overwritten(tiny_teacher, tmp_path):
    (tmp_path / "precious.txt").write_text("data")
    with pytest.raises(DkdmError, match="not a dkdm cache"):
        generate(gen_cfg(tiny_teacher, tmp_path), progress=False)
    assert (tmp_path / "precious.txt").read_text() == "data"


@pytest.mark.parametrize("field", ["trajectories", "shard_size", "batch_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(tiny_teacher, tmp_path, field, value):
    with pytest.raises(DkdmError, match=field):
        generate(gen_cfg(tiny_teacher, tmp_path / "c", **{field: value}), progress=False)


def test_keep_specs():
    assert parse_keep("all", 5) == [0, 1, 2, 3, 4]
    assert parse_keep("every:2", 5) == [0, 2, 4]
    assert parse_keep("last:2", 5) == [3, 4]
    assert parse_keep("0,3", 5) == [0, 3]
    with pytest.raises(DkdmError):
        parse_keep("7", 5)
    with pytest.raises(DkdmError):
        parse_keep("every:x", 5)


def test_keep_subset_and_info(tiny_teacher, tmp_path):
    generate(gen_cfg(tiny_teacher, tmp_path / "c", keep="every:2", trajectories=5), progress=False)
    i = info(str(tmp_path / "c"))
    assert i["records"] == 5 * 3 and i["trajectories"] == 5 and i["shards"] == 2
    assert i["bytes_per_record"] > 0


def test_cache_reader_refusals(tiny_cache, tmp_path, other_teacher):
    from dkdm.teacher import load_teacher

    with pytest.raises(DkdmError, match="not a dkdm cache"):
        CacheReader(str(tmp_path))
    with pytest.raises(DkdmError, match="refusing to mix teachers"):
        CacheReader(str(tiny_cache), expect_fingerprint=load_teacher(str(other_teacher)).fingerprint)
    with pytest.raises(DkdmError, match="shape"):
        CacheReader(str(tiny_cache), expect_record={"x_t": [3, 16, 16]})


def test_tampered_shard_is_named(tiny_cache, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(tiny_cache, out)
    f = out / "shards" / "traj-000002.tar"
    data = bytearray(f.read_bytes())
    data[2000] ^= 0xFF
    f.write_bytes(bytes(data))
    problems = verify(str(out))
    assert len(problems) == 1 and "traj-000002.tar" in problems[0]
    r = CacheReader(str(out))
    with pytest.raises(DkdmError, match="traj-000002.tar"):
        list(r.records(r.manifest["shards"][2]))
    with pytest.warns(UserWarning, match="traj-000002.tar"):
        assert list(r.records(r.manifest["shards"][2], on_bad="skip")) == []
    # the training stream (shards prefetched on a thread) names it too, or skips it and reads the rest
    with pytest.raises(DkdmError, match="traj-000002.tar"):
        list(r.loader(4, shuffle_buffer=8, epochs=1))
    with pytest.warns(UserWarning, match="traj-000002.tar"):
        got = list(r.loader(4, shuffle_buffer=8, epochs=1, on_bad="skip"))
    assert sum(len(b[0]) for b in got) == 40  # shards 0 and 1: 8 trajectories x 5 steps


def test_pickle_member_is_refused(tiny_cache, tmp_path):
    """A shard with a .pth member is refused even when its sha256 is (re)recorded."""
    import hashlib
    import io
    import tarfile

    out = tmp_path / "c"
    shutil.copytree(tiny_cache, out)
    f = out / "shards" / "traj-000000.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tw, tarfile.open(f) as tr:
        for m in tr.getmembers():
            tw.addfile(m, tr.extractfile(m))
        evil = tarfile.TarInfo("0000000000_0000.model.pth")
        payload = b"\x80\x04not really a pickle"
        evil.size = len(payload)
        tw.addfile(evil, io.BytesIO(payload))
    f.write_bytes(buf.getvalue())
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][0]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    m["shards"][0]["bytes"] = len(buf.getvalue())
    (out / "manifest.json").write_text(json.dumps(m))
    r = CacheReader(str(out))
    with pytest.raises(DkdmError, match="unexpected member"):
        list(r.records(r.manifest["shards"][0]))


def test_plain_webdataset_reads_records(tiny_cache):
    import webdataset as wds

    ds = wds.WebDataset(str(tiny_cache / "shards" / "traj-000000.tar"), shardshuffle=False).decode()
    samples = list(ds)
    assert len(samples) == 5  # one block per step: the shard's 4 trajectories walked together
    s = samples[0]
    assert s["__key__"] == "0000000000_0000"
    assert s["x_t.npy"].shape == (4, 1, 16, 16) and s["x_t.npy"].dtype == np.float16
    assert s["meta.json"]["traj"] == [0, 1, 2, 3] and s["meta.json"]["step"] == [0] * 4
    assert set(s["meta.json"]) == {"t", "traj", "step", "cond"}
    assert sum(len(s["meta.json"]["t"]) for s in samples) == 4 * 5


def test_base_seed_changes_trajectories(tiny_cache, tiny_teacher, tmp_path):
    """torch keeps 32 bits of a seed: base seeds must not live in the high word (they used to collide)."""
    generate(gen_cfg(tiny_teacher, tmp_path / "s1", seed=1, trajectories=4), progress=False)
    a = CacheReader(str(tiny_cache))
    b = CacheReader(str(tmp_path / "s1"))
    xa = next(a.records(a.manifest["shards"][0]))[0]
    xb = next(b.records(b.manifest["shards"][0]))[0]
    assert not np.allclose(xa.numpy(), xb.numpy())


def test_dpm_solver_cache_switches_to_leading_spacing(tiny_teacher, tmp_path):
    """DPM-Solver++ from t=999 of a squaredcos schedule diverges: generate samples with 'leading' spacing,
    records it, and the records stay finite."""
    from dkdm.config import SamplerConfig

    generate(gen_cfg(tiny_teacher, tmp_path / "d", trajectories=4, sampler=SamplerConfig(scheduler="dpm++", steps=5, coverage="grid")),
             progress=False)
    m = read_manifest(Store(tmp_path / "d"))
    assert m["sampler"]["timestep_spacing"] == "leading" and m["sampler"]["timesteps"][0] < 999
    r = CacheReader(str(tmp_path / "d"))
    for x, t, target in r.records(r.manifest["shards"][0]):
        assert torch.isfinite(x).all() and torch.isfinite(target).all() and x.abs().max() < 1e3
