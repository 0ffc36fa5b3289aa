"""`dkdm cache info|verify|ls`: what a cache holds, and whether every shard is intact."""

from __future__ import annotations

from .backend import backend_of, check_shard, data_present
from .manifest import read_manifest, read_sidecars
from .store import Store
from ..errors import DkdmError


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
        "sampler": {k: m["sampler"][k] for k in ("scheduler", "steps", "eta", "keep", "base_seed", "dtype", "guidance_scale", "coverage") if k in m["sampler"]},
        "record": m["record"],
        "shards": tot.get("shards", 0),
        "records": tot.get("records", 0),
        "trajectories": tot.get("trajectories", 0),
        "bytes": tot.get("bytes", 0),
        "bytes_per_record": tot["bytes"] / tot["records"] if tot.get("records") else None,
        "raw_fp32_bytes_per_record": raw,
        # JSON with sorted keys orders timesteps as strings ("39" after "359"): order them as numbers, high t first
        "t_hist": dict(sorted(tot.get("t_hist", {}).items(), key=lambda kv: -int(kv[0]))),
        "backend": backend_of(m),
        "conditioning": m.get("embeddings"),
        "sealed_at": m.get("sealed_at"),
    }


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def verify(url: str, deep: bool = False) -> list[str]:
    """Problems found (empty = intact): sha256, size (and with deep, record count) of every shard in the manifest."""
    store = Store(url)
    m = read_manifest(store)
    if not m.get("shards"):
        return [f"{store.url}: the manifest lists no shard (nothing to verify; finish it with `dkdm generate`)"]
    problems = [p for s in m["shards"] if (p := check_shard(store, s, m, deep=deep))]
    listed = {s["file"] for s in m["shards"]}
    covered = m["sampler"].get("covered_timesteps")
    allowed = {int(t) for t in covered} if covered is not None else None
    try:
        for sc in read_sidecars(store, m):
            if sc["file"] not in listed and data_present(store, sc):
                problems.append(f"{sc['file']}: complete shard not in the manifest (run `dkdm cache seal`)")
            # every shard's timestep histogram must stay on the timesteps the manifest names
            off = sorted({int(t) for t in sc.get("t_hist", {})} - allowed) if allowed is not None else []
            if off:
                problems.append(f"{sc['file']}: records at t={off[:5]} are not among the cache's covered timesteps "
                                f"(coverage {m['sampler'].get('coverage')})")
    except DkdmError as exc:
        problems.append(str(exc))
    if m.get("embeddings") and not store.exists(m["embeddings"]["path"]):
        problems.append(f"{m['embeddings']['path']}: missing (conditioning embeddings the records refer to)")
    return problems


def ls(url: str) -> list[dict]:
    m = read_manifest(Store(url))
    return m.get("shards", [])
