"""webdataset backend: one tar shard per range of trajectories, one tar sample per record block; verified before use."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import random
import re
import tarfile
import zlib
from collections import Counter
from typing import Iterator

import numpy as np
import webdataset as wds

from .. import seeds
from ..compat import tar_samples
from ..errors import BadShardError
from . import records as rec
from .limits import limit
from .layout import SHARD_DIR
from .store import Store
from .validate import RecordSpec

SUFFIX = ".tar"
GZ_SUFFIX = ".tar.gz"  # `--format wds-gz`: plain webdataset reads it too (tarfile mode "r|*")


class TarShardWriter:
    """Writes records to a temp file; `finish` moves it into place and returns its sidecar facts."""

    def __init__(self, store: Store, name: str, gz: bool = False):
        self.store, self.name = store, name
        self.suffix = GZ_SUFFIX if gz else SUFFIX
        self.tmp = store.temp_file(SHARD_DIR, self.suffix, owner=name)
        self._raw = open(self.tmp, "wb")
        # gzip header without file name or time, so equal records still give equal bytes; level 1: fp16 noise
        # compresses to within 0.5% of level 6 at 3/4 of the time, and this runs beside the teacher
        self._fh = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=1) if gz else self._raw
        # mtime fixed and sorted members: the same records give the same bytes (and sha256)
        self._tar = wds.TarWriter(self._fh, encoder=False, mtime=0, user="dkdm", group="dkdm")
        self.count = 0
        self.t_hist: Counter = Counter()

    def add(self, batch: rec.RecordBatch) -> None:
        self._tar.write(rec.encode(batch))
        ts, counts = np.unique(batch.t, return_counts=True)
        self.t_hist.update(dict(zip(ts.tolist(), counts.tolist())))
        self.count += len(batch)

    def add_many(self, batches) -> None:
        for b in batches:
            self.add(b)

    def finish(self) -> dict:
        self._tar.close()
        self._fh.close()
        self._raw.close()
        h = hashlib.sha256()
        with open(self.tmp, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(self.tmp)
        self.store.put_file(self.tmp, f"{SHARD_DIR}/{self.name}{self.suffix}")
        return {"file": self.name + self.suffix, "records": self.count, "bytes": size, "sha256": h.hexdigest(),
                "t_hist": {str(k): v for k, v in sorted(self.t_hist.items(), reverse=True)}}

    def abort(self) -> None:
        try:
            self._raw.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def read_verified(store: Store, shard: dict) -> bytes:
    """A shard's bytes, after its size and sha256 match the manifest (the size is checked before reading)."""
    rel = f"{SHARD_DIR}/{shard['file']}"
    try:
        size = store.size(rel)
        data = store.read_bytes(rel) if size == shard["bytes"] else b""
    except FileNotFoundError as exc:
        raise BadShardError(f"shard {store.url}/{rel} listed in the manifest is missing") from None
    if size != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise BadShardError(f"shard {store.url}/{rel} is corrupt or truncated "
                            f"({size} bytes, expected {shard['bytes']}; sha256 mismatch); run `dkdm cache verify`")
    return data


def plain_tar(data: bytes, spec: RecordSpec | None, where: str) -> bytes:
    """The uncompressed tar: gzip is inflated here with a ceiling from the manifest (records x record bytes
    plus tar overhead), so a decompression bomb stops at that size; any other compression is refused."""
    if data[:2] == b"\x1f\x8b":
        cap = limit("shard_bytes")
        if spec is not None:
            raw = spec.records * spec.np_dtype.itemsize * (math.prod(spec.x_shape) + math.prod(spec.target_shape))
            cap = min(cap, raw + spec.records * 4096 + (64 << 10))
        d = zlib.decompressobj(wbits=31)
        try:
            data = d.decompress(data, cap + 1)
        except zlib.error as exc:
            raise BadShardError(f"shard {where} is not valid gzip ({exc})") from None
        if len(data) > cap or d.unconsumed_tail:
            raise BadShardError(f"shard {where} inflates past {cap:,} bytes, more than its records can take "
                                "(decompression bomb?); refusing")
        if not d.eof or d.unused_data:
            raise BadShardError(f"shard {where} is a truncated gzip stream or has data after it")
    if len(data) < 512 or data[257:262] != b"ustar":
        raise BadShardError(f"shard {where} is not a plain tar (or gzipped tar) file")
    return data


def iter_shard_blocks(data: bytes, where: str, spec: RecordSpec | None = None) -> Iterator[rec.RecordBatch]:
    """The record blocks of a tar shard held in memory, each checked against `spec` (from the manifest)."""
    data = plain_tar(data, spec, where)
    try:
        samples = tar_samples(io.BytesIO(data), where)
        for sample in samples:
            block = rec.decode(sample, where, spec)
            if spec is not None:
                spec.check_block(block)
            yield block
    except (tarfile.TarError, ValueError, KeyError, OSError, EOFError, zlib.error) as exc:
        # webdataset appends its (stream, url) source to exc.args: keep only the message, never a BytesIO repr
        raise BadShardError(f"shard {where} cannot be read as a dkdm tar shard: {first_arg(exc)}") from None
    if spec is not None:
        spec.finish()


def first_arg(exc: BaseException) -> str:
    """An exception's own message, without what libraries append to its args; one line, bounded."""
    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
    msg = re.sub(r" @ <[^>]*>", "", msg)  # tar_file_iterator appends " @ <_io.BytesIO object at 0x...>"
    return (msg.strip().splitlines() or [type(exc).__name__])[0][:120]


def shard_order(shards: list[dict], seed: int, epoch: int, rank: int, world: int, worker: int, workers: int, shuffle: bool) -> list[dict]:
    """Each (rank, worker) gets its own slice of a per-epoch permutation: no shard read twice per epoch.
    Ranks split first (every rank gets a shard when world <= shards), then a rank's workers split its slice;
    a worker left without a shard gets [] and ends (CacheStream), so it cannot stall the DataLoader."""
    order = list(shards)
    if shuffle:
        random.Random(seeds.shard_order(seed, epoch)).shuffle(order)
    return order[rank::world][worker::workers]
