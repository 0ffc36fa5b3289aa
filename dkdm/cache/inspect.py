"""`dkdm cache info|verify|ls`: what a cache holds, and whether every shard is intact."""

from __future__ import annotations

import hashlib

from ..errors import DkdmError
from .manifest import SHARD_DIR, read_manifest, read_sidecars
from .store import Store
from .wds_backend import iter_shard_records


def info(url: str) -> dict:
    store = Store(url)
    m = read_manifest(store)
    tot = m.get("totals", {})
    raw = 4 * (_numel(m["record"]["x_t"]["shape"]) + _numel(m["record"]["target"]["shape"]))
    return {
        "cache": store.url,
        "cache_id": m["cache_id"],
        "teacher": {k: m["teacher"][k] for k in ("source", "class", "fingerprint")},
        "scheduler": m["scheduler"]["class"],
        "sampler": {k: m["sampler"][k] for k in ("scheduler", "steps", "eta", "keep", "base_seed", "dtype")},
        "record": m["record"],
        "shards": tot.get("shards", 0),
        "records": tot.get("records", 0),
        "trajectories": tot.get("trajectories", 0),
        "bytes": tot.get("bytes", 0),
        "bytes_per_record": tot["bytes"] / tot["records"] if tot.get("records") else None,
        "raw_fp32_bytes_per_record": raw,
        "t_hist": tot.get("t_hist", {}),
        "sealed_at": m.get("sealed_at"),
    }


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def verify(url: str, deep: bool = False) -> list[str]:
    """Problems found (empty = intact): sha256, size and record count of every shard in the manifest."""
    store = Store(url)
    m = read_manifest(store)
    problems = []
    listed = {s["file"] for s in m.get("shards", [])}
    for s in m.get("shards", []):
        rel = f"{SHARD_DIR}/{s['file']}"
        if not store.exists(rel):
            problems.append(f"{s['file']}: missing")
            continue
        data = store.read_bytes(rel)
        if len(data) != s["bytes"]:
            problems.append(f"{s['file']}: {len(data)} bytes, manifest says {s['bytes']} (truncated or replaced)")
            continue
        if hashlib.sha256(data).hexdigest() != s["sha256"]:
            problems.append(f"{s['file']}: sha256 mismatch (corrupt or tampered)")
            continue
        if deep:
            try:
                n = sum(1 for _ in iter_shard_records(data, s["file"]))
            except DkdmError as exc:
                problems.append(f"{s['file']}: {exc}")
                continue
            if n != s["records"]:
                problems.append(f"{s['file']}: {n} records, manifest says {s['records']}")
    for sc in read_sidecars(store):
        if sc["file"] not in listed and store.exists(f"{SHARD_DIR}/{sc['file']}"):
            problems.append(f"{sc['file']}: complete shard not in the manifest (run `dkdm cache seal`)")
    return problems


def ls(url: str) -> list[dict]:
    m = read_manifest(Store(url))
    return m.get("shards", [])
