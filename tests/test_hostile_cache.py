"""A catalogue of forged caches, each with the outcome it must get. The forger controls every byte of the
cache, so after tampering it re-hashes what it changed (manifest and sidecar agree with the bytes): only the
meaning checks can catch it. One small real cache per backend is built once; each case forges a copy."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from dkdm.cache.inspect import verify
from dkdm.cache.manifest import read_manifest, seal
from dkdm.cache.reader import CacheReader
from dkdm.cache.store import Store
from dkdm.cache.zarr_backend import combined_sha256
from dkdm.errors import DkdmError
from dkdm.generate import generate

from conftest import gen_cfg

SMALL = dict(trajectories=8, shard_size=4, batch_size=4)  # 2 shards x 4 trajectories x 5 steps = 20 records each


@pytest.fixture(scope="session")
def caches(tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for fmt in ("wds", "wds-gz", "zarr"):
        out[fmt] = root / fmt
        generate(gen_cfg(tiny_teacher, out[fmt], format=fmt, **SMALL), progress=False)
    return out


# ---------------------------------------------------------------- forging helpers

def jload(p: Path):
    return json.loads(p.read_text())


def jsave(p: Path, obj) -> None:
    p.write_text(json.dumps(obj))


def edit_manifest(c: Path, fn) -> None:
    m = jload(c / "manifest.json")
    fn(m)
    jsave(c / "manifest.json", m)


def edit_entry(c: Path, i: int, fn) -> None:
    """The same change to shard i's manifest entry and its sidecar."""
    edit_manifest(c, lambda m: fn(m["shards"][i]))
    side = c / "shards" / f"traj-{i:06d}.json"
    s = jload(side)
    fn(s)
    jsave(side, s)


def set_shard_bytes(c: Path, i: int, data: bytes) -> None:
    """Replace a tar shard's bytes and re-hash them everywhere, as a forger would."""
    entry = jload(c / "manifest.json")["shards"][i]
    (c / "shards" / entry["file"]).write_bytes(data)
    edit_entry(c, i, lambda e: e.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


def tar_of(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            for name, data in s.items():
                if name == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_samples(c: Path, i: int) -> tuple[list[dict], bool]:
    entry = jload(c / "manifest.json")["shards"][i]
    raw = (c / "shards" / entry["file"]).read_bytes()
    gz = raw[:2] == b"\x1f\x8b"
    samples: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw) if gz else raw)) as tf:
        for m in tf.getmembers():
            key, member = m.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[member] = tf.extractfile(m).read()
    return list(samples.values()), gz


def rewrite_samples(c: Path, i: int, fn) -> None:
    samples, gz = read_samples(c, i)
    fn(samples)
    data = tar_of(samples)
    set_shard_bytes(c, i, gzip.compress(data) if gz else data)


def npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def npy_header(shape) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "<f2", "fortran_order": False, "shape": shape})
    return b.getvalue()


def edit_array(member: str, fn):
    """Forge: change one .npy member of the first block of a shard."""
    def f(samples):
        a = np.load(io.BytesIO(samples[0][member]))
        samples[0][member] = npy(fn(a))
    return f


def edit_meta(fn):
    def f(samples):
        meta = json.loads(samples[0]["meta.json"])
        fn(meta)
        samples[0]["meta.json"] = json.dumps(meta).encode()
    return f


def rehash_zarr(c: Path) -> None:
    """Recompute every zarr shard's file hashes and combined sha256 (a consistent forgery)."""
    def fix(e):
        for rel in e["files"]:
            data = (c / rel).read_bytes()
            e["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        e["sha256"] = combined_sha256(e["files"], e["rows"])
    for i in range(len(jload(c / "manifest.json")["shards"])):
        edit_entry(c, i, fix)


def edit_zarr_meta(name: str, fn):
    def f(c):
        p = c / "trajectories.zarr" / name / "zarr.json"
        meta = jload(p)
        fn(meta)
        jsave(p, meta)
        rehash_zarr(c)
    return f


def zarr_poke(name: str, row: int, value):
    def f(c):
        import zarr
        with zarr.config.set({"array.write_empty_chunks": True}):
            a = zarr.open_array(zarr.storage.LocalStore(str(c / "trajectories.zarr" / name)), mode="r+")
            v = a[row]
            v.flat[0] = value
            a[row] = v
        rehash_zarr(c)
    return f


def blosc_claims_2gb(c: Path) -> None:
    """The first inner chunk of x_t's zarr shard says it inflates to 2 GiB (blosc header field nbytes)."""
    import struct
    f = c / "trajectories.zarr/x_t/c/0/0/0/0"
    meta = jload(c / "trajectories.zarr/x_t/zarr.json")
    n = meta["chunk_grid"]["configuration"]["chunk_shape"][0] // meta["codecs"][0]["configuration"]["chunk_shape"][0]
    data = bytearray(f.read_bytes())
    off = int(np.frombuffer(bytes(data[-(16 * n + 4):-4]), "<u8")[0])
    struct.pack_into("<I", data, off + 4, 2**31 - 1)
    f.write_bytes(bytes(data))
    rehash_zarr(c)


def symlink_shard(c: Path) -> None:
    outside = c.parent / f"{c.name}-outside.tar"
    shard = c / "shards" / "traj-000000.tar"
    shutil.copy(shard, outside)
    shard.unlink()
    shard.symlink_to(outside)


def symlink_shards_dir(c: Path) -> None:
    outside = c.parent / f"{c.name}-outside-shards"
    shutil.move(str(c / "shards"), outside)
    (c / "shards").symlink_to(outside, target_is_directory=True)


def symlink_manifest(c: Path) -> None:
    outside = c.parent / f"{c.name}-outside-manifest.json"
    shutil.move(str(c / "manifest.json"), outside)
    (c / "manifest.json").symlink_to(outside)


def outside_file(c: Path, i: int, path: str) -> None:
    secret = c.parent / "secret.bin"
    secret.write_bytes(b"s" * 12345)
    edit_entry(c, i, lambda e: e.update(file=path.replace("SECRET", str(secret))))


def dup_block(samples):
    meta0, meta1 = json.loads(samples[0]["meta.json"]), json.loads(samples[1]["meta.json"])
    samples[1]["meta.json"] = json.dumps({**meta1, "traj": meta0["traj"], "step": meta0["step"], "t": meta0["t"]}).encode()


def other_compression(c: Path) -> None:
    import bz2
    entry = jload(c / "manifest.json")["shards"][0]
    set_shard_bytes(c, 0, bz2.compress((c / "shards" / entry["file"]).read_bytes()))


def m_set(path: str, value):
    """Forge one manifest field (dotted path)."""
    def f(c):
        def g(m):
            *head, last = path.split(".")
            for k in head:
                m = m[int(k)] if isinstance(m, list) else m[k]
            if value is DELETE:
                del m[last]
            else:
                m[last] = value
        edit_manifest(c, g)
    return f


DELETE = object()


def shard_field(i: int, **kw):
    return lambda c: edit_entry(c, i, lambda e: e.update(kw))


def tars(fn):
    return lambda c: rewrite_samples(c, 0, fn)


# (id, backend, forge, expected: "ok" or a regex the refusal must contain)
CASES = [
    # --- 0. pristine caches are read
    ("pristine-wds", "wds", None, "ok"),
    ("pristine-gz", "wds-gz", None, "ok"),
    ("pristine-zarr", "zarr", None, "ok"),
    # --- 1. silent garbage
    ("nan-x_t", "wds", tars(edit_array("x_t.npy", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a).astype(a.dtype))), "x_t holds NaN or Inf"),
    ("inf-target", "wds", tars(edit_array("target.npy", lambda a: np.full_like(a, np.inf))), "target holds NaN or Inf"),
    ("nan-target-gz", "wds-gz", tars(edit_array("target.npy", lambda a: np.full_like(a, np.nan))), "target holds NaN or Inf"),
    ("nan-x_t-zarr", "zarr", zarr_poke("x_t", 3, np.nan), "x_t holds NaN or Inf"),
    ("nan-eta-manifest", "wds", m_set("sampler.eta", float("nan")), "eta must be a finite number"),
    # --- 2. paths not confined to the cache
    ("file-dotdot", "wds", lambda c: outside_file(c, 0, "../../secret.bin"), "file '../../secret.bin' is not 'traj-000000.tar'"),
    ("file-absolute", "wds", lambda c: outside_file(c, 0, "SECRET"), "is not 'traj-000000.tar'"),
    ("zarr-file-dotdot", "zarr", lambda c: edit_entry(c, 0, lambda e: e["files"].update({"../../secret.bin": {"bytes": 1, "sha256": "0" * 64}})), "are not the shard's files"),
    ("symlinked-shard", "wds", symlink_shard, "symlink"),
    ("symlinked-shards-dir", "wds", symlink_shards_dir, "symlink"),
    ("symlinked-manifest", "wds", symlink_manifest, "symlink"),
    ("embeddings-outside", "wds", m_set("embeddings", {"path": "../emb.zarr", "rows": 1, "seq": 1, "dim": 1, "sha256": "0" * 64}), "embeddings path"),
    # --- 3. unhashed or inconsistent metadata
    ("zarr-dtype-flip-unhashed", "zarr", lambda c: (c / "trajectories.zarr/x_t/zarr.json").write_text(
        (c / "trajectories.zarr/x_t/zarr.json").read_text().replace('"float16"', '"int16"')), "x_t/zarr.json has \\d+ bytes, manifest says"),
    ("zarr-dtype-flip-rehashed", "zarr", edit_zarr_meta("x_t", lambda m: m.update(data_type="int16")), "declares int16"),
    ("zarr-byte-order", "zarr", edit_zarr_meta("target", lambda m: m["codecs"][0]["configuration"]["codecs"][0]["configuration"].update(endian="big")), "little-endian"),
    ("zarr-shape", "zarr", edit_zarr_meta("x_t", lambda m: m.update(shape=[10**12, 1, 16, 16])), "declares float16"),
    ("zarr-overlapping-rows", "zarr", shard_field(1, rows=[0, 20]), "rows \\[0, 20\\] are not \\[20, 40\\)"),
    ("zarr-old-unhashed-sidecar", "zarr", lambda c: edit_entry(c, 0, lambda e: e.update(files={k: v for k, v in e["files"].items() if not k.endswith("zarr.json")})), "regenerate"),
    ("zarr-rows-outside-hash", "zarr", lambda c: edit_entry(c, 0, lambda e: e.update(sha256=combined_sha256(e["files"], [1, 21]))), "does not cover its files and rows"),
    # --- 4. sizes declared to exhaust memory
    ("npy-huge-shape", "wds", tars(lambda s: s[0].update({"x_t.npy": npy_header((10**9, 1, 16, 16)) + b"\0" * 64})), "x_t declares float16 \\(1000000000, 1, 16, 16\\)"),
    ("npy-garbage-header", "wds", tars(lambda s: s[0].update({"x_t.npy": npy_header((4, 1, 16, 16)).replace(b"(4, 1, 16, 16)", b"(4, 1, 16,,  ") + b"\0" * 64})), "not a plain numeric .npy"),
    ("npy-header-vs-bytes", "wds", tars(lambda s: s[0].update({"x_t.npy": s[0]["x_t.npy"][:-64]})), "holds"),
    ("record-shape-huge", "wds", m_set("record.x_t.shape", [1, 100000, 100000]), "over the limit"),
    ("record-dims", "wds", m_set("record.x_t.shape", [1, 16, 16, 16]), "list of at most 3 integers"),
    ("teacher-config-huge", "wds", m_set("teacher.config.sample_size", 4096), "does not match the record shapes"),
    ("teacher-class-foreign", "wds", m_set("teacher.class", "StableCascadeUNet"), "teacher class"),
    ("meta-more-rows", "wds", tars(edit_meta(lambda m: m.update({k: v * 1000 for k, v in m.items()}))), "more rows than"),
    ("zarr-blosc-header-lies", "zarr", blosc_claims_2gb, "cannot be decoded"),
    ("gz-inflates-too-far", "wds-gz", lambda c: set_shard_bytes(c, 0, gzip.compress(b"\0" * (8 << 20), 1)), "inflates past"),
    ("gz-truncated", "wds-gz", lambda c: set_shard_bytes(c, 0, (c / "shards/traj-000000.tar.gz").read_bytes()[:-40]), "truncated gzip|not valid gzip"),
    ("bz2-in-tar", "wds", other_compression, "not a plain tar"),
    # --- 5. record contents
    ("t-off-schedule", "wds", tars(edit_meta(lambda m: m.update(t=[t + 1 for t in m["t"]]))), "not on the manifest's schedule"),
    ("traj-outside-shard", "wds", tars(edit_meta(lambda m: m.update(traj=[t + 100 for t in m["traj"]]))), "outside the shard's trajectories"),
    ("step-not-kept", "wds", tars(edit_meta(lambda m: m.update(step=[4] * len(m["step"])))), "not on the manifest's schedule|duplicate"),
    ("duplicate-records", "wds", tars(dup_block), "duplicate \\(traj, step\\)"),
    ("cond-in-unconditional", "wds", tars(edit_meta(lambda m: m.update(cond=[0] * len(m["cond"])))), "cond rows set"),
    ("dropped-block", "wds", tars(lambda s: s.pop()), "records, manifest says 20"),
    ("dtype-mismatch", "wds", tars(edit_array("x_t.npy", lambda a: a.astype(np.float32))), "declares float32"),
    ("shape-mismatch", "wds", tars(edit_array("target.npy", lambda a: a[:, :, :8, :8].copy())), "declares float16"),
    ("pickle-member", "wds", tars(lambda s: s[0].update({"evil.pth": b"\x80\x04K\x01."})), "unexpected member"),
    ("sidecar-of-another-shard", "wds", shard_field(1, trajectories=[0, 4]), "trajectories \\[0, 4\\] are not within \\[4, 8\\)"),
    ("records-miscounted", "wds", shard_field(0, records=19), "19 records, but 4 trajectories"),
    ("shard-listed-twice", "wds", lambda c: edit_manifest(c, lambda m: m["shards"].append(dict(m["shards"][0]))), "listed twice"),
    # --- 7./8. malformed manifests and nonsense values
    ("manifest-missing-keys", "wds", m_set("record", DELETE), "lacks \\['record'\\]"),
    ("manifest-not-json", "wds", lambda c: (c / "manifest.json").write_bytes(b"{\xff"), "not valid JSON"),
    ("unknown-scheduler", "wds", m_set("scheduler.class", "os.system"), "scheduler class"),
    ("steps-negative", "wds", m_set("sampler.steps", -5), "sampler steps = -5"),
    ("fingerprint-not-hex", "wds", m_set("teacher.fingerprint", "../../x"), "fingerprint is not a sha256"),
    ("t-hist-garbage", "wds", shard_field(0, t_hist={"abc": 1}), "t_hist key"),
    ("no-shards", "wds", lambda c: edit_manifest(c, lambda m: m.update(shards=[])), "lists no shard"),
    ("shard-size-bool", "wds", m_set("layout.shard_size", True), "must be an integer"),
]


def examine(url: Path) -> str:
    """What verify --deep says, and that a reader refuses or reads the same: 'ok' or the refusal."""
    try:
        problems = verify(str(url), deep=True)
    except DkdmError as exc:
        problems = [str(exc)]
    try:
        r = CacheReader(str(url))
        n = sum(len(b) for s in r.manifest["shards"] for b in r.blocks(s))
        read = f"read {n}"
    except DkdmError as exc:
        read = f"refused: {exc}"
    if not problems:
        assert read.startswith("read"), f"verify said ok but the reader {read}"
        return "ok"
    assert read.startswith("refused"), f"verify found {problems} but the reader {read} records"
    return " | ".join(problems) + " || " + read


@pytest.mark.parametrize("name,fmt,forge,expect", CASES, ids=[c[0] for c in CASES])
def test_forged_cache(caches, tmp_path, name, fmt, forge, expect):
    c = tmp_path / "c"
    shutil.copytree(caches[fmt], c, symlinks=True)
    if forge is not None:
        forge(c)
    got = examine(c)
    if expect == "ok":
        assert got == "ok"
        return
    import re
    assert re.search(expect, got), got
    assert "12345" not in got  # never the size of a file outside the cache
    assert "\n" not in got


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40


def test_bad_shard_is_skipped_with_a_warning(caches, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(caches["wds"], c)
    rewrite_samples(c, 1, edit_array("x_t.npy", lambda a: np.full_like(a, np.nan)))
    r = CacheReader(str(c))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = list(r.dataset(4, shuffle_buffer=16, epochs=1, on_bad="skip"))
    assert sum(len(b[1]) for b in batches) == 20  # only shard 0's records: nothing of the bad shard
    assert all(np.isfinite(b[0].numpy()).all() for b in batches)
    assert any("skipping bad shard" in str(x.message) and "traj-000001" in str(x.message) for x in w)
    assert r.skipped == ["traj-000001.tar"]
    with pytest.raises(DkdmError, match="NaN"):
        list(CacheReader(str(c)).dataset(8, shuffle_buffer=16, epochs=1))


def test_every_shard_bad_stops_instead_of_spinning(caches, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(caches["wds"], c)
    for i in (0, 1):
        rewrite_samples(c, i, edit_meta(lambda m: m.update(t=[1] * len(m["t"]))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DkdmError, match="every shard"):
            next(iter(CacheReader(str(c)).dataset(8, shuffle_buffer=16, on_bad="skip")))


def test_seal_refuses_outside_and_inconsistent_sidecars(caches, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(caches["wds"], c)
    s = jload(c / "shards" / "traj-000001.json")
    jsave(c / "shards" / "traj-000001.json", {**s, "file": "../../../etc/passwd"})
    with pytest.raises(DkdmError, match="is not 'traj-000001.tar'"):
        seal(Store(c))
    jsave(c / "shards" / "traj-000001.json", {k: v for k, v in s.items() if k != "index"})
    with pytest.raises(DkdmError, match="lacks \\['index'\\]"):
        seal(Store(c))
    # a sidecar copied over another shard's name (the 'resume says complete' attack)
    jsave(c / "shards" / "traj-000001.json", jload(c / "shards" / "traj-000000.json"))
    with pytest.raises(DkdmError, match="describes shard traj-000000"):
        seal(Store(c))


def test_store_confines_names(tmp_path):
    st = Store(tmp_path)
    for bad in ("../x", "/etc/passwd", "a/../../b", "shards/../../x", "a//b", "a\\b", "x\0y", "..", "shards/ x"):
        with pytest.raises(DkdmError, match="refusing"):
            st.path(bad)
    assert st.path("shards/traj-000000.tar").endswith("/shards/traj-000000.tar")
    remote = Store("memory://bucket/c")  # object stores get the same name rules (no symlinks there)
    with pytest.raises(DkdmError, match="refusing"):
        remote.path("../other-bucket/x")
    assert remote.path("shards/traj-000000.tar").endswith("bucket/c/shards/traj-000000.tar")


def test_generate_never_writes_through_a_symlinked_shards_dir(caches, tiny_teacher, tmp_path):
    c, outside = tmp_path / "c", tmp_path / "outside"
    shutil.copytree(caches["wds"], c)
    shutil.rmtree(c / "shards")
    outside.mkdir()
    (c / "shards").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DkdmError, match="symlink"):
        generate(gen_cfg(tiny_teacher, c, format="wds", **SMALL), progress=False)
    assert list(outside.iterdir()) == []


def test_limits_are_configurable(caches, tmp_path, monkeypatch):
    monkeypatch.setenv("DKDM_LIMIT_RECORD_ELEMENTS", "100")
    with pytest.raises(DkdmError, match="DKDM_LIMIT_RECORD_ELEMENTS"):
        read_manifest(Store(caches["wds"]))
    monkeypatch.setenv("DKDM_LIMIT_RECORD_ELEMENTS", "1e6")
    monkeypatch.setenv("DKDM_LIMIT_JSON_BYTES", "100")
    with pytest.raises(DkdmError, match="size is .* over the limit"):
        read_manifest(Store(caches["wds"]))
    monkeypatch.setenv("DKDM_LIMIT_JSON_BYTES", "nope")
    with pytest.raises(DkdmError, match="not a number"):
        read_manifest(Store(caches["wds"]))


BOMB = """
import resource, sys
from dkdm.cache.inspect import verify
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
problems = verify(sys.argv[1], deep=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, len(problems), problems[0] if problems else "")
"""


def test_gzip_bomb_stays_under_a_memory_ceiling(caches, tmp_path):
    """A 256 MiB tar member in a 1 MB gzip shard: inflating stops at the manifest's bound, the process grows < 64 MB."""
    c = tmp_path / "c"
    shutil.copytree(caches["wds-gz"], c)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    member = tarfile.TarInfo("0000000000_0000.x_t.npy")
    member.size = 256 << 20  # one tar member of 256 MiB (zeros)
    zeros = b"\0" * (16 << 20)
    bomb = b"".join([comp.compress(member.tobuf(format=tarfile.USTAR_FORMAT))]
                    + [comp.compress(zeros) for _ in range(16)] + [comp.flush()])
    set_shard_bytes(c, 0, bomb)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    res = subprocess.run([sys.executable, "-c", BOMB, str(c)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    before, after, n, first = res.stdout.split(" ", 3)
    assert int(n) == 1 and "inflates past" in first
    assert (int(after) - int(before)) * 1024 < 64 << 20, res.stdout  # ru_maxrss is in KiB on Linux


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_finite_check_on_storage_bits(dtype):
    import torch
    from dkdm.cache.records import to_storage
    from dkdm.cache.validate import _finite

    x = torch.randn(4, 1, 8, 8) * 100
    assert _finite(to_storage(x, dtype), dtype)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[2, 0, 3, 5] = bad
        assert not _finite(to_storage(y, dtype), dtype)


def test_distill_on_bad_shard_stop_or_skip(caches, tmp_path):
    from dkdm.distill.loop import distill
    from test_distill import dcfg

    c = tmp_path / "c"
    shutil.copytree(caches["wds"], c)
    rewrite_samples(c, 1, edit_meta(lambda m: m.update(traj=[0] * len(m["traj"]))))
    with pytest.raises(DkdmError, match="traj-000001.tar.*outside the shard's trajectories"):
        distill(dcfg(tmp_path / "stop", cache=str(c), steps=8, batch_size=4, shuffle_buffer=8, checkpoint_every=0), progress=False)
    assert not (tmp_path / "stop" / "run" / "student").exists()
    with pytest.warns(UserWarning, match="skipping bad shard.*traj-000001"):
        res = distill(dcfg(tmp_path / "skip", cache=str(c), steps=8, batch_size=4, shuffle_buffer=8, checkpoint_every=0,
                           on_bad_shard="skip"), progress=False)
    assert res["last_step"] == 8 and (tmp_path / "skip" / "run" / "student").is_dir()


def test_forged_conditioning(tmp_path):
    """Text-conditioned caches: embeddings dtype flip (same bytes, same content hash), shapes unlike the
    manifest, and a record pointing past the embeddings are all refused."""
    from dkdm.cache.embeddings import read_embeddings
    from dkdm.config import SamplerConfig
    from test_cache_conditional import save_tiny_conditional_teacher

    teacher = save_tiny_conditional_teacher(tmp_path / "t2i")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a one\nzero\n")
    good = tmp_path / "good"
    generate(gen_cfg(teacher, good, trajectories=2, shard_size=2, batch_size=2, format="zarr", prompts=str(prompts),
                     sampler=SamplerConfig(steps=2)), progress=False)
    assert examine(good) == "ok"
    expect = read_manifest(Store(good))["embeddings"]

    c = tmp_path / "flip"
    shutil.copytree(good, c)
    meta = c / "embeddings.zarr" / "emb" / "zarr.json"
    meta.write_text(meta.read_text().replace('"float32"', '"int32"'))
    with pytest.raises(DkdmError, match="dtypes int32/int64/float32"):
        read_embeddings(Store(c), expect)
    with pytest.raises(DkdmError, match="declares shapes"):
        read_embeddings(Store(good), {**expect, "rows": 5})

    c = tmp_path / "cond"
    shutil.copytree(good, c)
    zarr_poke("cond", 1, 7)(c)
    assert re.search("cond row 7 outside the 2 prompt embeddings", examine(c))
