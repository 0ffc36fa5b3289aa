"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, counter=None):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("dkdm_requests", "Finished HTTP requests to /v1/generate", ["model", "code"], registry=r)
        self.errors = Counter("dkdm_errors", "Requests answered with 4xx/5xx", ["model", "code"], registry=r)
        self.images = Counter("dkdm_images", "Images generated", ["model"], registry=r)
        self.queue = Gauge("dkdm_queue_images", "Images waiting for a forward batch", registry=r)
        self.batches = Histogram("dkdm_batch_images", "Images per forward batch (padding excluded)", ["model"],
                                 buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("dkdm_request_seconds", "Request latency, arrival to response", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("dkdm_batch_seconds", "Seconds of one forward batch (all sampler steps)", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.rate = Gauge("dkdm_images_per_second", "Images generated per second over the last 10 s", registry=r)
        self.rate.set_function(self._rate)
        self._recent = collections.deque()  # (time, images) of the last 10 s
        self.counter = counter  # an energy counter (dkdm.evaluate.energy) or None: no joules are made up
        if counter is not None:
            self.joules = Counter("dkdm_joules", f"Energy of forward batches ({counter.name})", ["model"], registry=r)
            self.joules_per_image = Gauge("dkdm_joules_per_image", "Joules per image of the last batch", ["model"], registry=r)

    def _rate(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - 10:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / 10.0

    def batch_done(self, model: str, images: int, seconds: float, joules: float | None) -> None:
        self.images.labels(model).inc(images)
        self.batches.labels(model).observe(images)
        self.compute.labels(model).observe(seconds)
        self._recent.append((time.monotonic(), images))
        if joules is not None and self.counter is not None:
            self.joules.labels(model).inc(joules)
            self.joules_per_image.labels(model).set(joules / images)

    def request_done(self, model: str, code: int, seconds: float | None) -> None:
        self.requests.labels(model, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, str(code)).inc()
        if seconds is not None:
            self.latency.labels(model).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
