"""Where distillation batches come from: cache records, a live-teacher pool, or both; each source
knows its position so a checkpoint can resume the stream exactly."""

from __future__ import annotations

import torch

from ..cache.reader import CacheReader
from .pool import TeacherPool


class CacheSource:
    """Batches from the cache stream (per-rank shards, shuffle buffer). The stream is deterministic
    for a given seed/rank/world, so its position is the number of batches consumed: a resumed run
    re-opens the stream and fast-forwards."""

    def __init__(self, reader: CacheReader, batch_size: int, shuffle_buffer: int, seed: int, rank: int, world: int,
                 num_workers: int, device, on_bad: str = "error"):
        self.args = (batch_size, shuffle_buffer, seed, rank, world, num_workers)
        self.on_bad = on_bad
        self.reader, self.device, self.consumed, self._it = reader, device, 0, None

    def _open(self):
        b, buf, seed, rank, world, nw = self.args
        it = iter(self.reader.loader(b, num_workers=nw, shuffle_buffer=buf, seed=seed, rank=rank, world=world,
                                     on_bad=self.on_bad))
        for _ in range(self.consumed):
            next(it)
        return it

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._open()
        x, t, target, cond = next(self._it)
        self.consumed += 1
        return (x.to(self.device, non_blocking=True), t.to(self.device), target.to(self.device, non_blocking=True),
                cond.to(self.device))

    def state_dict(self) -> dict:
        return {"consumed": torch.tensor(self.consumed, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        self.consumed, self._it = int(state["consumed"]), None


class PairSource(CacheSource):
    """Batches of state pairs of one trajectory (dkdm.cache.paths); resumes by fast-forwarding, like CacheSource."""

    def __init__(self, reader: CacheReader, batch_size: int, shuffle_buffer: int, seed: int, rank: int, world: int,
                 num_workers: int, device, sched, jump: int, on_bad: str = "error", stride: int = 1):
        super().__init__(reader, batch_size, shuffle_buffer, seed, rank, world, num_workers, device, on_bad)
        self.sched, self.jump, self.stride = sched, jump, stride

    def _open(self):
        from ..cache.paths import pair_loader

        b, buf, seed, rank, world, nw = self.args
        it = iter(pair_loader(self.reader, b, self.sched, self.jump, num_workers=nw, shuffle_buffer=buf, seed=seed,
                              rank=rank, world=world, on_bad=self.on_bad, stride=self.stride))
        for _ in range(self.consumed):
            next(it)
        return it

    def __next__(self):
        if self._it is None:
            self._it = self._open()
        batch = next(self._it)
        self.consumed += 1
        return tuple(v.to(self.device, non_blocking=True) for v in batch)


class PoolSource:
    def __init__(self, pool: TeacherPool):
        self.pool = pool

    def __iter__(self):
        return self

    def __next__(self):
        return self.pool.draw()

    def state_dict(self) -> dict:
        return self.pool.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state)


class MemorySource:
    """Batches already in memory, cycled: the loader-free reference for the throughput benchmark."""

    def __init__(self, batches: list[tuple]):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

