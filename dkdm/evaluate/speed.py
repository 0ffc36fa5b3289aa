"""Speed, size and energy, measured the same way for every model: warm-up, median of repeats, synchronised.

On GPU, time comes from CUDA events; on CPU from perf_counter. Energy comes from a hardware counter
(`energy.open_counter`) read around the timed repeats, or is reported unavailable.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..sampling import sample
from ..students.call import model_call
from . import energy as energymod


class Timer:
    """Wall time of a block: CUDA events on GPU (queued work counted), perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.t0, self.t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.t0.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.t1.record()
            self.t1.synchronize()
            self.seconds = self.t0.elapsed_time(self.t1) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def time_sampling(models: dict, sched, shape, batch_size: int, repeats: int = 5, warmup: int = 1, device="cpu",
                  counter=None) -> tuple[dict, dict]:
    """Seconds per full sampling run of one batch for each model, `repeats` rounds after `warmup`; in each round
    the models take turns, so a load swing on a shared machine hits all of them alike. Joules per model are
    summed over its own runs (None without a counter). `sched`: one for all, or a dict with each model's own."""
    seeds = list(range(batch_size))
    own = sched if isinstance(sched, dict) else dict.fromkeys(models, sched)
    for n, fn in models.items():
        for _ in range(warmup):
            sample(fn, own[n], seeds, shape, device=device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    times = {n: [] for n in models}
    joules = {n: 0.0 if counter else None for n in models}
    for _ in range(repeats):
        for n, fn in models.items():
            token = counter.start() if counter else None
            with Timer(device) as tm:
                sample(fn, own[n], seeds, shape, device=device)
            times[n].append(tm.seconds)
            if counter:
                j = counter.stop(token)
                joules[n] = None if j is None or joules[n] is None else joules[n] + j
    return times, joules


def percentile(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(round(q * (len(sorted_vals) - 1))))]


def speed_report(model, sched, shape, batch_sizes: list[int], repeats: int, device="cpu", counter=None,
                 energy_reason: str | None = None, main: tuple | None = None) -> dict:
    """images/s per batch size, batch-1 latency p50/p95, peak memory, energy per image (first batch size).
    `main` = (times, joules) of the first batch size already measured (interleaved with other models)."""
    throughput = {}
    joules_main = None
    for i, bs in enumerate(batch_sizes):
        if i == 0 and main is not None:
            times, joules = main
        else:
            t, j = time_sampling({"m": model}, sched, shape, bs, repeats, device=device, counter=counter if i == 0 else None)
            times, joules = t["m"], j["m"]
        med = statistics.median(times)
        throughput[str(bs)] = {"images_per_s": bs / med, "seconds_per_batch_median": med, "seconds_per_batch_all": times}
        if i == 0:
            joules_main = joules
    lat = sorted(time_sampling({"m": model}, sched, shape, 1, max(repeats, 5), device=device)[0]["m"])
    main = throughput[str(batch_sizes[0])]
    out = {
        "batch_size": batch_sizes[0],
        "images_per_s": main["images_per_s"],
        "seconds_per_batch_median": main["seconds_per_batch_median"],
        "seconds_per_batch_all": main["seconds_per_batch_all"],
        "throughput": throughput,
        "latency_b1_ms_p50": 1000 * statistics.median(lat),
        "latency_b1_ms_p95": 1000 * percentile(lat, 0.95),
        "latency_b1_ms_all": [1000 * t for t in lat],
        "timer": "cuda-events" if torch.device(device).type == "cuda" else "perf_counter",
    }
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        sample(model, sched, list(range(batch_sizes[0])), shape, device=device)
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        out["peak_memory_bytes"] = None
        out["peak_memory_note"] = "not measured on CPU (torch keeps allocator statistics for CUDA only)"
    if counter is not None and joules_main is not None:
        n = repeats * batch_sizes[0]
        out["energy"] = {"available": True, "counter": counter.name, "joules": joules_main, "images": n,
                         "joules_per_image": joules_main / n}
    else:
        out["energy"] = energymod.unavailable(energy_reason or "no energy counter")
    return out


@torch.no_grad()
def flops_per_step(unet, shape, device="cpu") -> int:
    """FLOPs of one denoiser call on one image (torch.utils.flop_counter)."""
    x = torch.zeros(1, *shape, device=device, dtype=next(unet.parameters()).dtype)
    t = torch.tensor([500], device=device)
    with FlopCounterMode(display=False) as fc:
        model_call(unet, x, t)
    return int(fc.get_total_flops())


def weights_bytes(unet) -> int:
    return sum(p.numel() * p.element_size() for p in unet.parameters()) + sum(b.numel() * b.element_size() for b in unet.buffers())
