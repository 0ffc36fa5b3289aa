"""A shuffle buffer over tensors: records from many blocks are mixed with one gather per batch, so a
trainer's loader spends microseconds, not a Python loop over records, on each batch."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch


class TensorShuffleBuffer:
    """Holds up to `capacity` records (storage dtype); each batch is `batch` rows drawn without
    replacement, and the holes are filled from the buffer's tail. Deterministic for a generator seed."""

    def __init__(self, capacity: int, batch: int, generator: torch.Generator):
        self.capacity, self.batch, self.gen = max(capacity, batch), batch, generator
        self.rows: list[torch.Tensor] | None = None
        self.n = 0

    def _append(self, block: tuple[torch.Tensor, ...]) -> None:
        m = len(block[0])
        if self.rows is None:
            self.rows = [torch.empty((self.capacity + m, *b.shape[1:]), dtype=b.dtype) for b in block]
        elif self.n + m > len(self.rows[0]):
            self.rows = [torch.cat([r[:self.n], torch.empty((m, *r.shape[1:]), dtype=r.dtype)]) for r in self.rows]
        for r, b in zip(self.rows, block):
            r[self.n:self.n + m] = b
        self.n += m

    def _take(self) -> tuple[torch.Tensor, ...]:
        n, b = self.n, self.batch
        idx = torch.randperm(n, generator=self.gen)[:b]
        out = tuple(r[idx] for r in self.rows)
        tail = n - b
        holes = idx[idx < tail]
        keep = torch.ones(b, dtype=torch.bool)
        keep[idx[idx >= tail] - tail] = False
        movers = torch.arange(tail, n)[keep]
        for r in self.rows:
            r[holes] = r[movers]
        self.n = tail
        return out

    def batches(self, blocks: Iterable[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches while blocks keep coming (once `capacity` records are buffered), then drain; a last partial batch is dropped."""
        for block in blocks:
            self._append(block)
            while self.n >= self.capacity:
                yield self._take()
        while self.n >= self.batch:
            yield self._take()
