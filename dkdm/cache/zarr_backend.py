"""zarr v3 backend: `trajectories.zarr`, one zarr shard file per cache shard and array, so writers never share a file."""

from __future__ import annotations

import hashlib
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
        for rel in shard_files(self.index, ndims):
            data = self.store.read_bytes(rel)
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return {"file": self.name, "records": self.count, "bytes": sum(f["bytes"] for f in files.values()),
                "sha256": combined_sha256(files), "files": files, "rows": [lo, lo + self.count],
                "t_hist": {str(k): v for k, v in sorted(self.t_hist.items(), reverse=True)}}

    def abort(self) -> None:
        self.batches = []


def combined_sha256(files: dict) -> str:
    """One hash for a shard made of several files: sha256 over 'path sha256' lines in path order."""
    lines = "".join(f"{p} {files[p]['sha256']}\n" for p in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_files(store: Store, shard: dict) -> str | None:
    """None when every file of the shard matches its size and sha256, else what is wrong."""
    for rel, want in sorted(shard["files"].items()):
        try:
            data = store.read_bytes(rel)
        except FileNotFoundError:
            return f"{shard['file']}: {rel} missing"
        if len(data) != want["bytes"]:
            return f"{shard['file']}: {rel} has {len(data)} bytes, manifest says {want['bytes']} (truncated or replaced)"
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            return f"{shard['file']}: {rel} sha256 mismatch (corrupt or tampered)"
    return None


def read_shard(store: Store, shard: dict) -> dict[str, np.ndarray]:
    """The arrays of one (verified) shard's rows."""
    lo, hi = shard["rows"]
    try:
        group = zarr.open_group(zarr_store(store, ROOT), mode="r", zarr_format=3)
        return {k: group[k][lo:hi] for k in (*TENSORS, *SCALARS)}
    except Exception as exc:  # codec errors on a damaged file surface as many exception types
        raise DkdmError(f"shard {shard['file']} in {store.url} cannot be decoded: {exc}") from exc


def iter_shard_blocks(arrays: dict, where: str) -> Iterator[rec.RecordBatch]:
    """The shard's rows as one block, like the tar backend's blocks; unwritten rows (t = -1) are an error."""
    yield rec.check_block(rec.RecordBatch(**arrays), where)

