"""Stream a cache into a trainer: verified shards, per-rank/worker split, a tensor shuffle buffer, batches."""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .. import seeds
from ..errors import DkdmError
from . import backend
from .manifest import check_expected, read_manifest
from .records import RecordBatch
from .shuffle import TensorShuffleBuffer
from .store import Store
from .wds_backend import shard_order


class CacheReader:
    """Opens a sealed cache and checks it is what the trainer expects before streaming anything."""

    def __init__(self, url: str, expect_fingerprint: str | None = None, expect_record: dict | None = None):
        self.store = Store(url)
        self.manifest = read_manifest(self.store)
        check_expected(self.manifest, expect_fingerprint, expect_record, where=url)
        if not self.manifest.get("shards"):
            raise DkdmError(f"cache {url} has no complete shards; finish it with `dkdm generate` or `dkdm cache seal`")
        self.dtype = self.manifest["record"]["x_t"]["dtype"]
        self.skipped: list[str] = []  # shards dropped by on_bad='skip'

    @property
    def num_records(self) -> int:
        return self.manifest["totals"]["records"]

    def blocks(self, shard: dict, on_bad: str = "error", fetched: Future | None = None) -> Iterator[RecordBatch]:
        """One shard's record blocks, after its bytes matched the manifest; on_bad='skip' warns and yields nothing.
        `fetched` is the shard's content already being read on a thread (see CacheStream)."""
        try:
            content = fetched.result() if fetched is not None else backend.fetch(self.store, shard, self.manifest)
            # the whole shard is checked before its first record is used: a bad shard is skipped entirely
            blocks = list(backend.blocks_of(self.store, shard, content, self.manifest))
        except DkdmError as exc:
            if on_bad == "skip":
                warnings.warn(f"skipping bad shard: {exc}")
                self.skipped.append(shard["file"])
                return
            raise
        yield from blocks

    def records(self, shard: dict, on_bad: str = "error") -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        """(x_t, t, target) one record at a time (float32): for inspection and tests; training reads blocks."""
        for x, t, target, _ in backend.unbatch(self.blocks(shard, on_bad), self.dtype):
            yield x, t, target

    def dataset(self, batch_size: int, **kw) -> "CacheStream":
        return CacheStream(self, batch_size, **kw)

    def loader(self, batch_size: int, num_workers: int = 0, **kw) -> DataLoader:
        """Batches of (x_t, t, target, cond), float32 tensors for x_t/target: the stream batches itself."""
        idle = idle_workers(len(self.manifest["shards"]), kw.get("world", 1), num_workers)
        if idle:
            warnings.warn(f"cache {self.store.url} has {len(self.manifest['shards'])} shards for {kw.get('world', 1)} rank(s) x "
                          f"{num_workers} loader workers: {idle} worker(s) per rank get no shard and stop; use fewer --num-workers")
        return DataLoader(self.dataset(batch_size, **kw), batch_size=None, num_workers=num_workers,
                          persistent_workers=num_workers > 0)


def idle_workers(shards: int, world: int, workers: int) -> int:
    """Loader workers of the rank with the fewest shards that get none (ranks split shards first, then workers)."""
    return max(0, workers - shards // max(world, 1)) if workers > 0 else 0


class CacheStream(IterableDataset):
    """Endless (or `epochs`-long) stream of batches; epochs reshuffle shards, a tensor buffer mixes records."""

    def __init__(self, reader: CacheReader, batch_size: int, shuffle_buffer: int = 8192, seed: int = 0, rank: int = 0,
                 world: int = 1, epochs: int | None = None, on_bad: str = "error"):
        self.reader, self.batch_size, self.buffer, self.seed = reader, batch_size, shuffle_buffer, seed
        self.rank, self.world, self.epochs, self.on_bad = rank, world, epochs, on_bad
        self._bad: set[str] = set()  # shards skipped as bad (on_bad='skip'), per process
        if world > len(reader.manifest["shards"]):
            raise DkdmError(f"cache has {len(reader.manifest['shards'])} shards, fewer than the {world} ranks reading it; "
                            "generate with a smaller --shard-size")

    def _shards(self, worker: int, workers: int) -> Iterator[dict]:
        epoch, all_shards = 0, self.reader.manifest["shards"]
        if not shard_order(all_shards, self.seed, 0, self.rank, self.world, worker, workers, shuffle=False):
            return  # more workers than this rank's shards: this one has nothing to read, every epoch; end now
        while self.epochs is None or epoch < self.epochs:
            if len(self._bad) >= len(all_shards):  # with on_bad='skip' the stream would otherwise spin, empty, forever
                raise DkdmError(f"every shard of cache {self.reader.store.url} is bad; nothing to train on")
            for shard in shard_order(all_shards, self.seed, epoch, self.rank, self.world, worker, workers, shuffle=True):
                if shard["file"] not in self._bad:  # a skipped shard is not fetched, nor warned about, again
                    yield shard
            epoch += 1

    def _blocks(self, worker: int, workers: int):
        """Blocks in shard order; the next shard is fetched (read + sha256) on a thread while this one is decoded,
        so an object store's latency does not stall the trainer."""
        with ThreadPoolExecutor(1, thread_name_prefix="dkdm-prefetch") as io:
            pending: deque = deque()
            for shard in self._shards(worker, workers):
                pending.append((shard, io.submit(backend.fetch, self.reader.store, shard, self.reader.manifest)))
                if len(pending) > 1:
                    yield from self._decode(*pending.popleft())
            while pending:
                yield from self._decode(*pending.popleft())

    def _decode(self, shard: dict, fetched: Future):
        good = False
        for block in self.reader.blocks(shard, self.on_bad, fetched):
            good = True
            yield block.torch(self.reader.dtype)
        if not good:  # every shard holds >= 1 record, so nothing yielded means it was skipped as bad
            self._bad.add(shard["file"])

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        gen = torch.Generator().manual_seed(seeds.worker(self.seed, self.rank, worker))
        buf = TensorShuffleBuffer(self.buffer, self.batch_size, gen)
        for x, t, target, cond in buf.batches(self._blocks(worker, workers)):
            yield x.float(), t, target.float(), cond
