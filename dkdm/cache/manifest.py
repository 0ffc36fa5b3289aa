"""Cache identity, the manifest (cache format v2) and per-shard sidecars."""

from __future__ import annotations

import hashlib
import json
import time

import diffusers
import torch

from .. import __version__
from ..errors import DkdmError
from .layout import FORMAT, MANIFEST, SHARD_DIR, data_present  # noqa: F401  (re-exported: the cache's names)
from .store import Store


def shard_name(index: int) -> str:
    return f"traj-{index:06d}"


def jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def make_identity(teacher, sched, sampler: dict, record: dict, layout: dict) -> dict:
    """Everything that decides what the records are; cache_id hashes the parts that change bits."""
    scheduler = {"class": type(sched).__name__,
                 "config": {k: v for k, v in jsonable(dict(sched.config)).items() if not k.startswith("_")}}
    ident = {
        "format": FORMAT,
        "teacher": jsonable(teacher.describe()),
        "scheduler": scheduler,
        "sampler": jsonable(sampler),
        "record": record,
        "layout": layout,
        # the library that steps the scheduler: another diffusers may round a step differently, so it makes another cache
        "software": {"diffusers": diffusers.__version__},
    }
    ident["cache_id"] = cache_id(ident)
    return ident


def cache_id(ident: dict) -> str:
    key = {"teacher": ident["teacher"]["fingerprint"], "scheduler": ident["scheduler"],
           "sampler": ident["sampler"], "record": ident["record"]}
    if "software" in ident:  # caches made before dkdm 0.4 have none: their ids stay what they were
        key["diffusers"] = ident["software"]["diffusers"]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def tool_versions() -> dict:
    return {"dkdm": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def read_manifest(store: Store, check: bool = True) -> dict:
    """The manifest, its size bounded and (with check) every field typed and bounded (see validate.py)."""
    from .validate import check_manifest, read_json

    if not store.exists(MANIFEST):
        if not store.exists():
            raise DkdmError(f"cache {store.url} does not exist")
        raise DkdmError(f"{store.url} is not a dkdm cache (no {MANIFEST}); create one with `dkdm generate --out {store.url}`")
    m = read_json(store, MANIFEST)
    if isinstance(m, dict) and m.get("format") == "dkdm-cache/1":
        raise DkdmError(f"{store.url} is a dkdm-cache/1 cache (one tar sample per record), written by dkdm < 0.2; "
                        f"this dkdm reads {FORMAT}: regenerate it with `dkdm generate`")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DkdmError(f"{store.url} is not a dkdm cache of format {FORMAT} (format={m.get('format') if isinstance(m, dict) else None!r})")
    return check_manifest(m, f"{store.url}/{MANIFEST}") if check else m


def write_manifest(store: Store, manifest: dict) -> None:
    store.write_bytes(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def read_sidecars(store: Store, manifest: dict | None = None) -> list[dict]:
    """Every shard sidecar, each bounded and checked against the cache's layout (index, name, trajectories, rows)."""
    from .validate import check_shard_entry, read_json

    m = manifest or read_manifest(store)
    out = []
    for name in store.ls(SHARD_DIR):
        if name.startswith("traj-") and name.endswith(".json"):
            rel = f"{SHARD_DIR}/{name}"
            s = read_json(store, rel)
            check_shard_entry(s, m, f"{store.url}/{rel}")
            if name != f"{s['name']}.json":
                raise DkdmError(f"sidecar {store.url}/{rel} describes shard {s['name']}; refusing (a sidecar names its own shard)")
            out.append(s)
    return sorted(out, key=lambda s: s["index"])


def seal(store: Store, identity: dict | None = None, force: bool = True) -> dict:
    """Rebuild the manifest's index from the sidecars; refuses sidecars of another cache. Without `force`, an index
    that would lose shards the old manifest listed is not written (DkdmError); the result's "dropped" names them."""
    old = read_manifest(store) if identity is None else (read_manifest(store, check=False) if store.exists(MANIFEST) else {})
    if identity is None:
        identity = {k: v for k, v in old.items() if k not in ("shards", "totals", "sealed_at", "created_by")}
    shards = read_sidecars(store, identity)
    for s in shards:
        if s.get("cache_id") != identity["cache_id"]:
            raise DkdmError(f"shard {s.get('name')} in {store.url} belongs to cache {s.get('cache_id')}, not {identity['cache_id']}: "
                            "it was generated with another teacher or settings; remove it or use another --out")
    complete = [s for s in shards if data_present(store, s)]
    manifest = dict(identity)
    keys = ("index", "name", "file", "records", "bytes", "sha256", "trajectories", "files", "rows")
    manifest["shards"] = [{k: s[k] for k in keys if k in s} for s in complete]
    hist: dict[str, int] = {}
    for s in complete:
        for t, n in (s.get("t_hist") or {}).items():
            hist[str(t)] = hist.get(str(t), 0) + int(n)
    manifest["totals"] = {
        "shards": len(complete),
        "records": sum(s["records"] for s in complete),
        "bytes": sum(s["bytes"] for s in complete),
        "trajectories": sum(s["trajectories"][1] - s["trajectories"][0] for s in complete),
        "t_hist": dict(sorted(hist.items(), key=lambda kv: -int(kv[0]))),
    }
    dropped = sorted({s["name"] for s in old.get("shards", [])} - {s["name"] for s in complete})
    if dropped and not force:
        raise DkdmError(f"{store.url}/{MANIFEST}: sealing would drop {len(dropped)} of its {len(old['shards'])} shards "
                        f"({', '.join(dropped[:2])}{', ...' if len(dropped) > 2 else ''}): sidecar or data missing or foreign; "
                        "nothing written (check with `dkdm cache verify`, or --force)")
    manifest["created_by"] = tool_versions()
    manifest["sealed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_manifest(store, manifest)
    return {**manifest, "dropped": dropped}


def check_expected(manifest: dict, fingerprint: str | None = None, record: dict | None = None, where: str = "") -> None:
    """A trainer states what it expects; a cache made by another teacher or with other shapes is refused."""
    fp = manifest["teacher"]["fingerprint"]
    if fingerprint is not None and fp != fingerprint:
        raise DkdmError(f"cache {where} was made by teacher {fp[:12]}… ({manifest['teacher']['source']}), "
                        f"not the expected {fingerprint[:12]}…; refusing to mix teachers")
    if record is not None:
        for k in ("x_t", "target"):
            got = manifest["record"][k]["shape"]
            if k in record and list(record[k]) != list(got):
                raise DkdmError(f"cache {where} holds {k} of shape {got}, the student expects {list(record[k])}")
