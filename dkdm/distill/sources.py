"""Where distillation batches come from: cache records, a live-teacher pool, or both."""

from __future__ import annotations

from typing import Iterator

import torch

from ..cache.reader import CacheReader
from .pool import TeacherPool


def cache_batches(reader: CacheReader, batch_size: int, shuffle_buffer: int, seed: int, rank: int, world: int,
                  num_workers: int, device) -> Iterator[tuple]:
    loader = reader.loader(batch_size, num_workers=num_workers, shuffle_buffer=shuffle_buffer, seed=seed, rank=rank, world=world)
    for x, t, target in loader:
        yield x.to(device, non_blocking=True), t.to(device), target.to(device, non_blocking=True)


def pool_batches(pool: TeacherPool) -> Iterator[tuple]:
    while True:
        yield pool.draw()


def mixed_batches(a: Iterator[tuple], b: Iterator[tuple]) -> Iterator[tuple]:
    """Half of each batch from each source ('both'): cache records and fresh live-teacher states."""
    while True:
        xa, ta, ya = next(a)
        xb, tb, yb = next(b)
        h = len(xa) // 2
        yield torch.cat([xa[:h], xb[: len(xb) - h]]), torch.cat([ta[:h], tb[: len(tb) - h]]), torch.cat([ya[:h], yb[: len(yb) - h]])
