"""Stream a cache into a trainer: verified shards, per-rank/worker split, shuffle buffer, batches."""

from __future__ import annotations

import itertools
import random
import warnings
from typing import Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DkdmError
from . import backend
from .manifest import check_expected, read_manifest
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

    @property
    def num_records(self) -> int:
        return self.manifest["totals"]["records"]

    def records(self, shard: dict, on_bad: str = "error") -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        """(x_t, t, target) of one shard, after its bytes matched the manifest; on_bad='skip' warns and yields nothing."""
        it = backend.records(self.store, shard, self.dtype)
        try:
            first = next(it, None)  # the integrity check runs before the first record
        except DkdmError as exc:
            if on_bad == "skip":
                warnings.warn(f"skipping bad shard: {exc}")
                return
            raise
        if first is None:
            return
        for x, t, target, _ in itertools.chain([first], it):
            yield x, t, target

    def dataset(self, **kw) -> "CacheStream":
        return CacheStream(self, **kw)

    def loader(self, batch_size: int, num_workers: int = 0, **kw) -> DataLoader:
        return DataLoader(self.dataset(**kw), batch_size=batch_size, num_workers=num_workers,
                          persistent_workers=num_workers > 0, drop_last=True)


class CacheStream(IterableDataset):
    """Endless (or one-epoch) record stream; epochs reshuffle shards, a buffer mixes records."""

    def __init__(self, reader: CacheReader, shuffle_buffer: int = 8192, seed: int = 0, rank: int = 0,
                 world: int = 1, epochs: int | None = None, on_bad: str = "error"):
        self.reader, self.buffer, self.seed = reader, shuffle_buffer, seed
        self.rank, self.world, self.epochs, self.on_bad = rank, world, epochs, on_bad
        if world > len(reader.manifest["shards"]):
            raise DkdmError(f"cache has {len(reader.manifest['shards'])} shards, fewer than the {world} ranks reading it; "
                            "generate with a smaller --shard-size")

    def _records(self, worker: int, workers: int):
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            shards = shard_order(self.reader.manifest["shards"], self.seed, epoch, self.rank, self.world, worker, workers,
                                 shuffle=True)
            for shard in shards:
                yield from self.reader.records(shard, self.on_bad)
            epoch += 1

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = self._records(worker, workers)
        if self.buffer > 1:
            rng = random.Random(self.seed * 7919 + self.rank * 104729 + worker)
            stream = wds.filters._shuffle(stream, bufsize=self.buffer, initial=min(self.buffer, 1024), rng=rng)
        for x, t, target in stream:
            yield x, torch.tensor(t, dtype=torch.long), target
