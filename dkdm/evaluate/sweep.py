"""Sweeps of scheduler x steps for every model, and the quality-vs-cost Pareto front over them."""

from __future__ import annotations

import statistics

import numpy as np
import torch

from ..config import SamplerConfig
from ..progress import progress_bar
from ..sampling import sample
from ..schedulers import make_scheduler, stable_scheduler
from .features import extract
from .speed import Timer


def scheduler_for(kind: str, steps: int, spacing: str, sched_config: dict):
    """(sched, spacing used) for one sweep point; see schedulers.stable_scheduler."""
    return stable_scheduler(SamplerConfig(scheduler=kind, steps=steps, timestep_spacing=spacing), sched_config)


def run_sweep(models: dict, sched_config: dict, schedulers: list[str], steps_list: list[int], seeds, shape,
              batch_size: int, extractor, reference, counter=None, timestep_spacing: str = "trailing",
              device="cpu", progress: bool = True, configs: dict | None = None) -> list[dict]:
    """One point per (model, scheduler, steps): FID/KID against the reference, seconds and joules per image.
    `configs`: a model's own scheduler config where it differs from `sched_config` (own_sampler.noise_config)."""
    seeds = list(seeds)
    total = len(models) * len(schedulers) * len(steps_list) * len(seeds)
    bar = progress_bar(total, "sweep", disable=not progress, unit="img")
    points = []
    for name, fn in models.items():
        base = (configs or {}).get(name, sched_config)
        warm = make_scheduler(SamplerConfig(scheduler="ddim", steps=2, timestep_spacing=timestep_spacing), base)
        sample(fn, warm, seeds[:batch_size], shape, device=device)  # warm-up: first-call allocations out of the timings
        for kind in schedulers:
            for steps in steps_list:
                sched, spacing = scheduler_for(kind, steps, timestep_spacing, base)
                point, _ = measure(fn, sched, seeds, shape, batch_size, extractor, reference, counter, device,
                                   bar=bar, label=(name, f"{kind}-{steps}"))
                points.append({"model": name, "scheduler": kind, "steps": steps, "timestep_spacing": spacing, **point})
    bar.close()
    return points


def measure(fn, sched, seeds: list, shape, batch_size: int, extractor, reference, counter=None, device="cpu", bar=None,
            label: tuple = ("", "")) -> tuple[dict, np.ndarray]:
    """Sample `seeds` in batches with one scheduler: FID/KID against the reference, the median over batches of the
    sampling seconds per image, joules per image; and the features (callers score subsets of the same samples)."""
    imgs, per_image = [], []
    token = counter.start() if counter else None
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i:i + batch_size]
        with Timer(device) as tm:
            x = sample(fn, sched, chunk, shape, device=device)
        imgs.append(x.cpu())
        per_image.append(tm.seconds / len(chunk))
        if bar is not None:
            bar.update(len(chunk), model=label[0], sched=label[1])
    joules = counter.stop(token) if counter else None
    feats = extract(extractor, torch.cat(imgs), " ".join(label), progress=False)
    return {"n": len(seeds), "fid": reference.fid(feats), "kid": reference.kid(feats),
            "seconds_per_image": statistics.median(per_image),
            "joules_per_image": joules / len(seeds) if joules is not None else None}, feats


def pareto_front(points: list[dict], cost: str = "seconds_per_image", quality: str = "fid") -> list[dict]:
    """Points no other point beats on both cost and quality (lower is better for both), cheapest first."""
    pts = [p for p in points if p.get(cost) is not None and p.get(quality) is not None]
    front = [p for p in pts if not any(q[cost] <= p[cost] and q[quality] <= p[quality] and
                                       (q[cost] < p[cost] or q[quality] < p[quality]) for q in pts)]
    return sorted(front, key=lambda p: p[cost])


def cheapest_reaching(points: list[dict], target: float, cost: str = "seconds_per_image", quality: str = "fid") -> dict | None:
    """The least costly (model, scheduler, steps) whose quality is at or below the target, or None."""
    ok = [p for p in points if p.get(cost) is not None and p[quality] <= target]
    return min(ok, key=lambda p: p[cost]) if ok else None
