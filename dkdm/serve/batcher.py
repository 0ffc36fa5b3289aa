"""Dynamic batching: concurrent requests with the same model and settings share one forward batch.

One compute thread runs batches one after another (torch uses its own intra-op threads); while it runs,
new requests queue up and join the next batch, so batches grow with load. A batch waits up to `max_wait_ms`
for the clients of the previous batch to come back (see `_want_more`); a lone client never waits.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .schema import GenerateRequest, Limits


class QueueFull(Exception):
    pass


@dataclass
class Job:
    req: GenerateRequest
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, run_batch, limits: Limits, metrics=None, init_thread=None):
        """run_batch(key, seeds, prompts, pad_to) -> (images, joules or None), called on the compute thread;
        each request's future gets (its images, images in its batch, seconds of the batch)."""
        self.run_batch, self.limits, self.metrics = run_batch, limits, metrics
        self.pending: list[Job] = []
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="dkdm-compute", initializer=init_thread)
        self.task: asyncio.Task | None = None
        self.batches = 0  # forward batches run (tests read it)
        self.last_size: dict[tuple, int] = {}  # images in flight when the last batch per settings key ended

    @property
    def queued_images(self) -> int:
        return sum(j.req.n for j in self.pending)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, req: GenerateRequest):
        """This request's result; a caller that times out in the queue or is cancelled (disconnect) leaves it at once."""
        if self.queued_images + req.n > self.limits.max_queue:
            raise QueueFull(f"queue full: {self.queued_images} images waiting, limit {self.limits.max_queue}")
        job = Job(req, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self._gauge()
        self.wake.set()
        try:
            await asyncio.wait({job.future}, timeout=self.limits.timeout_s)
            if not job.future.done() and job in self.pending:  # never started: 503; a running batch is waited for
                raise asyncio.TimeoutError
            return await job.future
        finally:
            if job in self.pending:  # cancelled before its batch started: free the slot
                self.pending.remove(job)
                self._gauge()

    def _gauge(self):
        if self.metrics:
            self.metrics.queue.set(self.queued_images)

    def _take(self) -> list[Job]:
        """Oldest request first, then later ones with the same settings while the batch has room."""
        first = self.pending[0]
        batch, room = [], max(self.limits.max_batch, first.req.n)
        for j in list(self.pending):
            if j.req.batch_key == first.req.batch_key and j.req.n <= room:
                batch.append(j)
                room -= j.req.n
                self.pending.remove(j)
                if room == 0:
                    break
        self._gauge()
        return batch

    def _want_more(self) -> bool:
        """Wait for company only while fewer images are queued than were in flight (computing + queued) when the
        last batch of these settings ended: under steady load the clients of that batch are coming back
        (staggered by their own overhead), and a batch started without them costs nearly a full batch's time.
        Counting the queued ones too merges two half-size batches that would otherwise alternate for ever.
        A lone client is never made to wait."""
        key = self.pending[0].req.batch_key
        queued = sum(j.req.n for j in self.pending if j.req.batch_key == key)
        return queued < min(self.limits.max_batch, self.last_size.get(key, 1))

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
                continue
            # from now, not from the oldest arrival: requests that queued while the last batch ran arrived long ago,
            # and the clients of that batch only start coming back when it ends
            deadline = time.monotonic() + self.limits.max_wait_ms / 1000
            while self.pending and self._want_more() and (left := deadline - time.monotonic()) > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            if not self.pending:
                continue
            batch = self._take()
            req = batch[0].req
            seeds = [s for j in batch for s in j.req.seeds]
            prompts = [j.req.prompt for j in batch for _ in range(j.req.n)] if req.prompt is not None else None
            pad = self.limits.max_batch if self.limits.exact else None
            t0 = time.monotonic()
            try:
                images, joules = await loop.run_in_executor(self.executor, self.run_batch, req.batch_key, seeds, prompts, pad)
            except Exception as exc:  # a failing batch fails its requests, not the server
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches += 1
            waiting = sum(j.req.n for j in self.pending if j.req.batch_key == req.batch_key)
            self.last_size[req.batch_key] = len(seeds) + waiting
            seconds = time.monotonic() - t0
            if self.metrics:
                self.metrics.batch_done(req.model, len(seeds), seconds, joules)
            i = 0
            for j in batch:
                if not j.future.done():  # a caller that went away while its batch ran
                    j.future.set_result((images[i:i + j.req.n], len(seeds), seconds))
                i += j.req.n
