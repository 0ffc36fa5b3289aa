"""One interface over both shard backends: open a writer, check, verify and read a shard."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import torch

from ..errors import BadShardError, DkdmError
from . import records as rec
from . import wds_backend, zarr_backend
from .layout import SHARD_DIR, data_present  # noqa: F401  (data_present re-exported: inspect and generate call it here)
from .manifest import read_manifest
from .store import Store
from .validate import RecordSpec

FORMATS = ("wds", "wds-gz", "zarr")  # --format; wds-gz is the wds backend with gzip-compressed tar shards


def backend_of(manifest_or_layout: dict) -> str:
    layout = manifest_or_layout.get("layout", manifest_or_layout)
    return layout.get("backend", "wds")


def open_writer(store: Store, name: str, index: int, record: dict, layout: dict, background: bool = True):
    if layout["backend"] == "zarr":
        w = zarr_backend.ZarrShardWriter(store, name, index, record, layout)
    else:
        w = wds_backend.TarShardWriter(store, name, gz=layout.get("compression") == "gzip")
    return BackgroundWriter(w) if background else w


class BackgroundWriter:
    """Encodes and writes records on one thread while the teacher computes the next batch (order, hence bytes, kept)."""

    _DONE = object()

    def __init__(self, writer, depth: int = 4):
        self.writer = writer
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"dkdm-writer-{writer.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batches := self._q.get()) is not self._DONE:
            if self._error is None:
                try:
                    self.writer.add_many(batches)
                except BaseException as exc:  # handed to the caller at its next call
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    @property
    def count(self) -> int:
        return self.writer.count

    def add_many(self, batches) -> None:
        self._check()
        self._q.put(list(batches))  # one item per teacher batch: the teacher blocks only when `depth` batches behind

    def finish(self) -> dict:
        self._q.put(self._DONE)
        self._thread.join()
        self._check()
        return self.writer.finish()

    def abort(self) -> None:
        self._q.put(self._DONE)
        self._thread.join()
        self.writer.abort()


def prepare(store: Store, record: dict, layout: dict) -> None:
    if layout["backend"] == "zarr":
        zarr_backend.create_arrays(store, record, layout)


def check_shard(store: Store, shard: dict, manifest: dict, deep: bool = False) -> str | None:
    """None when the shard matches the manifest (size, sha256; with deep, every record checked), else the problem."""
    try:
        if "files" in shard:
            problem = zarr_backend.verify_files(store, shard, manifest)
            if problem:
                return problem
            content = zarr_backend.read_shard(store, shard) if deep else None
        else:
            content = wds_backend.read_verified(store, shard)
        if deep:
            for _ in blocks_of(store, shard, content, manifest):
                pass
    except DkdmError as exc:
        return f"{shard['file']}: {exc}"
    return None


def fetch(store: Store, shard: dict, manifest: dict, verified: bool = False):
    """A shard's content after its bytes matched the manifest: tar bytes, or zarr arrays. This is the I/O
    part of reading, so a reader can run it on a thread for the next shard while decoding this one."""
    if "files" in shard:
        if not verified:
            problem = zarr_backend.verify_files(store, shard, manifest)
            if problem:
                raise BadShardError(f"shard {problem} in {store.url}; run `dkdm cache verify`")
        return zarr_backend.read_shard(store, shard)
    return wds_backend.read_verified(store, shard)


def blocks_of(store: Store, shard: dict, content, manifest: dict) -> Iterator[rec.RecordBatch]:
    """Record blocks, each checked against the manifest (shape, dtype, finite, t, traj, step, cond, no duplicate)."""
    # a tar shard lives in shards/; a zarr shard is rows of trajectories.zarr, named by its index
    where = f"{store.url}/{shard['file']}" if "files" in shard else f"{store.url}/{SHARD_DIR}/{shard['file']}"
    spec = RecordSpec(manifest, shard, f"shard {where}")
    if "files" in shard:
        return zarr_backend.iter_shard_blocks(content, where, spec)
    return wds_backend.iter_shard_blocks(content, where, spec)


def raw_blocks(store: Store, shard: dict, manifest: dict, verified: bool = False) -> Iterator[rec.RecordBatch]:
    """Record blocks in storage dtype; the shard's bytes are checked against the manifest first."""
    yield from blocks_of(store, shard, fetch(store, shard, manifest, verified), manifest)


def unbatch(blocks, dtype: str | None = None) -> Iterator[tuple]:
    """Records one at a time, for inspection and tests (training reads blocks): (x_t, target, meta) in storage
    dtype, or with `dtype` given (x_t, t, target, meta) as float32 tensors."""
    for block in blocks:
        for i in range(len(block)):
            x, target, meta = block.record(i)
            yield (x, target, meta) if dtype is None else (rec.from_storage(x, dtype), meta["t"],
                                                           rec.from_storage(target, dtype), meta)


def raw_records(store: Store, shard: dict, manifest: dict | None = None) -> Iterator[tuple]:
    return unbatch(raw_blocks(store, shard, manifest or read_manifest(store)))


def records(store: Store, shard: dict, dtype: str, manifest: dict | None = None) -> Iterator[tuple[torch.Tensor, int, torch.Tensor, dict]]:
    return unbatch(raw_blocks(store, shard, manifest or read_manifest(store)), dtype)
