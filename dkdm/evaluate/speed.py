"""Speed and size, measured the same way for every model: warm-up, median of repeats, synchronised."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..sampling import sample


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model, sched, shape, batch_size: int, repeats: int = 5, warmup: int = 1, device="cpu") -> list[float]:
    """Seconds per full sampling run of one batch (all steps), `repeats` times after `warmup` runs."""
    seeds = list(range(batch_size))
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        sample(model, sched, seeds, shape, device=device)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def speed_report(model, sched, shape, batch_size: int, repeats: int, device="cpu") -> dict:
    times = time_sampling(model, sched, shape, batch_size, repeats, device=device)
    lat = sorted(time_sampling(model, sched, shape, 1, max(repeats, 5), device=device))
    med = statistics.median(times)
    out = {
        "batch_size": batch_size,
        "images_per_s": batch_size / med,
        "seconds_per_batch_median": med,
        "seconds_per_batch_all": times,
        "latency_b1_ms_p50": 1000 * statistics.median(lat),
        "latency_b1_ms_p95": 1000 * lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
    }
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        sample(model, sched, list(range(batch_size)), shape, device=device)
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


@torch.no_grad()
def flops_per_step(unet, shape, device="cpu") -> int:
    """FLOPs of one denoiser call on one image (torch.utils.flop_counter)."""
    x = torch.zeros(1, *shape, device=device, dtype=next(unet.parameters()).dtype)
    t = torch.tensor([500], device=device)
    with FlopCounterMode(display=False) as fc:
        unet(x, t)
    return int(fc.get_total_flops())
