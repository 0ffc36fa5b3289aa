"""zarr v3 backend: `trajectories.zarr`, one zarr shard file per cache shard and array, so writers never share a file."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import DkdmError
from . import records as rec
from .store import Store

ROOT = "trajectories.zarr"
TENSORS = ("x_t", "target")
SCALARS = ("t", "traj", "step", "cond")


def zarr_store(store: Store, rel: str):
    """A zarr store for `rel` under the cache root: LocalStore on disk, FsspecStore for URLs (s3://, ...)."""
    if store.local:
        return zarr.storage.LocalStore(store.path(rel))
    return zarr.storage.FsspecStore.from_url(store.full_url(rel))


def storage_np_dtype(dtype: str) -> str:
    return "uint16" if dtype == "bfloat16" else dtype  # numpy/zarr have no bfloat16: its bits travel as uint16


def chunk_rows(rows_per_shard: int, row_bytes: int) -> int:
    """Inner chunk (rows along the record axis) dividing the shard, near 256 KiB so random access stays cheap."""
    want = max(1, (256 << 10) // max(1, row_bytes))
    best = 1
    for d in range(1, rows_per_shard + 1):
        if rows_per_shard % d == 0 and d <= want:
            best = d
    return best


def create_arrays(store: Store, record: dict, layout: dict) -> None:
    """Create the empty arrays (metadata only); idempotent, so every writer may call it."""
    group = zarr.open_group(zarr_store(store, ROOT), mode="a", zarr_format=3)
    n, per = layout["records_total"], layout["records_per_shard"]
    dt = record["x_t"]["dtype"]
    for name in TENSORS:
        shape = tuple(record[name]["shape"])
        if name in group:
            continue
        row = int(np.prod(shape)) * np.dtype(storage_np_dtype(dt)).itemsize
        c = chunk_rows(per, row)
        group.create_array(name, shape=(n, *shape), shards=(per, *shape), chunks=(c, *shape), dtype=storage_np_dtype(dt),
                           compressors=BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=2),
                           fill_value=0, attributes={"dkdm_dtype": dt}, overwrite=False)
    for name in SCALARS:
        if name not in group:
            group.create_array(name, shape=(n,), shards=(per,), chunks=(per,), dtype="int64", fill_value=-1,
                               compressors=BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=8), overwrite=False)


def meta_files() -> list[str]:
    """The zarr metadata a shard's values depend on (dtype, byte order, shape, codecs): hashed in every sidecar."""
    return sorted([f"{ROOT}/zarr.json", *(f"{ROOT}/{n}/zarr.json" for n in (*TENSORS, *SCALARS))])


def expected_files(index: int, record: dict) -> list[str]:
    ndims = {**{n: 1 + len(record[n]["shape"]) for n in TENSORS}, **{n: 1 for n in SCALARS}}
    return sorted(shard_files(index, ndims) + meta_files())


def shard_files(name_index: int, ndims: dict) -> list[str]:
    """Relative paths of the zarr shard files that hold cache shard g (default chunk key encoding)."""
    out = []
    for name in (*TENSORS, *SCALARS):
        out.append(f"{ROOT}/{name}/c/{name_index}" + "/0" * (ndims[name] - 1))
    return sorted(out)


class ZarrShardWriter:
    """Buffers one cache shard's records in memory and writes each array's zarr shard in one go at `finish`."""

    def __init__(self, store: Store, name: str, index: int, record: dict, layout: dict):
        self.store, self.name, self.index = store, name, index
        self.record, self.layout = record, layout
        self.batches: list[rec.RecordBatch] = []
        self.count = 0
        self.t_hist: Counter = Counter()

    def add(self, batch: rec.RecordBatch) -> None:
        self.batches.append(batch)
        self.count += len(batch)
        for t in batch.t.tolist():
            self.t_hist[int(t)] += 1

    def add_many(self, batches) -> None:
        for b in batches:
            self.add(b)

    def finish(self) -> dict:
        per = self.layout["records_per_shard"]
        if self.count > per:
            raise DkdmError(f"shard {self.name} got {self.count} records, more than its {per} slots")
        lo = self.index * per
        block = rec.concat(self.batches)
        cat = {k: getattr(block, k) for k in (*TENSORS, *SCALARS)}
        # every shard file must exist even when its values equal the fill value (cond = -1 everywhere)
        with zarr.config.set({"array.write_empty_chunks": True}):
            for k, v in cat.items():
                zarr.open_array(zarr_store(self.store, f"{ROOT}/{k}"), mode="r+")[lo:lo + self.count] = v
        ndims = {k: v.ndim for k, v in cat.items()}
        files = {}
        for rel in shard_files(self.index, ndims) + meta_files():
            data = self.store.read_bytes(rel)
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return {"file": self.name, "records": self.count, "bytes": sum(f["bytes"] for p, f in files.items() if p not in meta_files()),  # data only
                "sha256": combined_sha256(files, [lo, lo + self.count]), "files": files, "rows": [lo, lo + self.count],
                "t_hist": {str(k): v for k, v in sorted(self.t_hist.items(), reverse=True)}}

    def abort(self) -> None:
        self.batches = []


def combined_sha256(files: dict, rows: list) -> str:
    """One hash for a shard made of several files and a row range: sha256 over 'path sha256' lines in path
    order, then 'rows lo hi' (so a sidecar cannot point the same bytes at other rows)."""
    lines = "".join(f"{p} {files[p]['sha256']}\n" for p in sorted(files)) + f"rows {rows[0]} {rows[1]}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_files(store: Store, shard: dict, manifest: dict | None = None) -> str | None:
    """None when every file of the shard (data and metadata) matches its size and sha256 and the metadata
    says what the manifest says, else what is wrong."""
    if combined_sha256(shard["files"], shard["rows"]) != shard["sha256"]:
        return f"{shard['file']}: sha256 does not cover its files and rows (tampered sidecar or manifest)"
    for rel, want in sorted(shard["files"].items()):
        try:
            size = store.size(rel)
        except FileNotFoundError:
            return f"{shard['file']}: {rel} missing"
        if size != want["bytes"]:
            return f"{shard['file']}: {rel} has {size} bytes, manifest says {want['bytes']} (truncated or replaced)"
        data = store.read_bytes(rel)
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            return f"{shard['file']}: {rel} sha256 mismatch (corrupt or tampered)"
        if manifest is not None and rel.endswith("/zarr.json") and rel != f"{ROOT}/zarr.json":
            problem = check_array_meta(data, rel.split("/")[-2], manifest)
            if problem:
                return f"{shard['file']}: {rel} {problem}"
    return None


INNER_CODECS = ("bytes", "blosc", "zstd", "gzip", "crc32c")


def check_array_meta(data: bytes, name: str, m: dict) -> str | None:
    """None when an array's zarr.json has the shape, dtype, byte order, sharding and codecs the manifest implies."""
    try:
        meta = json.loads(data)
        lay, per = m["layout"], m["layout"]["records_per_shard"]
        tail = list(m["record"][name]["shape"]) if name in TENSORS else []
        dtype = storage_np_dtype(m["record"]["x_t"]["dtype"]) if name in TENSORS else "int64"
        if meta.get("shape") != [lay["records_total"], *tail] or meta.get("data_type") != dtype:
            return f"declares {meta.get('data_type')} {meta.get('shape')}, the manifest implies {dtype} {[lay['records_total'], *tail]}"
        if meta.get("chunk_grid") != {"name": "regular", "configuration": {"chunk_shape": [per, *tail]}} \
                or meta.get("storage_transformers") or meta.get("chunk_key_encoding", {}).get("name") != "default":
            return "has another chunk grid or key encoding than one zarr shard per cache shard"
        (sharding,) = meta["codecs"]
        inner = sharding["configuration"]["chunk_shape"]
        if sharding["name"] != "sharding_indexed" or len(inner) != 1 + len(tail) or any(o % i for o, i in zip([per, *tail], inner)):
            return "has an unexpected sharding codec"
        for c in sharding["configuration"]["codecs"] + sharding["configuration"]["index_codecs"]:
            if c["name"] not in INNER_CODECS or (c["name"] == "bytes" and c.get("configuration", {}).get("endian", "little") != "little"):
                return f"uses codec {c} (only little-endian bytes, blosc, zstd, gzip, crc32c are read)"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"is not the zarr metadata dkdm writes ({type(exc).__name__}: {exc})"
    return None


def read_shard(store: Store, shard: dict) -> dict[str, np.ndarray]:
    """The arrays of one (verified) shard's rows."""
    lo, hi = shard["rows"]
    try:
        group = zarr.open_group(zarr_store(store, ROOT), mode="r", zarr_format=3)
        return {k: group[k][lo:hi] for k in (*TENSORS, *SCALARS)}
    except Exception as exc:  # codec errors on a damaged file surface as many exception types
        raise DkdmError(f"shard {shard['file']} in {store.url} cannot be decoded: {exc}") from exc


def iter_shard_blocks(arrays: dict, where: str, spec=None) -> Iterator[rec.RecordBatch]:
    """The shard's rows as one block, like the tar backend's blocks; unwritten rows (t = -1) are an error."""
    block = rec.check_block(rec.RecordBatch(**arrays), where)
    if spec is not None:
        spec.check_block(block)
        spec.finish()
    yield block

