"""`dkdm bench distill`: distill step throughput fed from the cache, from tensors already in memory
(the loader-free ceiling) and from a live teacher, in one run; results go to docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from ..cache.reader import CacheReader
from ..config import DistillConfig
from ..distill.pool import TeacherPool
from ..distill.sources import CacheSource, MemorySource, PoolSource
from ..distill.trainer import Batch, StudentTrainer
from .markdown import replace_section
from ..runtime import accelerator, positive
from ..schedulers import make_scheduler
from ..students import build_unet, count_params, student_spec_for
from ..teacher import load_teacher

SECTION = "## Distill"


def _trainer(cfg: DistillConfig, spec, acc):
    torch.manual_seed(cfg.seed)
    student = build_unet(spec)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr)
    lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=cfg.warmup_steps)
    ema = EMAModel(student.parameters(), decay=cfg.ema_decay)
    student, opt = acc.prepare(student, opt)
    return StudentTrainer(acc, student, opt, lr_sched, ema, spec.in_channels), count_params(student)


def _time(trainer, source, steps: int, warmup: int) -> float:
    """Steps per second over `steps` timed steps (after `warmup` untimed ones), data loading included."""
    def one():
        x, t, target, *_ = next(source)
        trainer.step([Batch(x, t, target[:, :trainer.channels], target)])

    for _ in range(warmup):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps / (time.perf_counter() - t0)


def bench_distill(cfg: DistillConfig, steps: int = 100, warmup: int = 10, rounds: int = 3, in_memory_batches: int = 32,
                  log=print) -> dict:
    """Rounds interleave the modes so load from other processes on a shared box hits them alike."""
    positive("steps", steps)
    positive("rounds", rounds)
    acc = accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    teacher = load_teacher(cfg.teacher, acc.device)
    reader = CacheReader(cfg.cache, expect_fingerprint=teacher.fingerprint)
    spec = student_spec_for(reader.manifest["teacher"]["config"], cfg.student)
    b = cfg.batch_size
    cache_src = CacheSource(reader, b, cfg.shuffle_buffer, cfg.seed, 0, 1, cfg.num_workers, acc.device)
    memory = MemorySource([next(CacheSource(reader, b, cfg.shuffle_buffer, cfg.seed + 1, 0, 1, 0, acc.device))
                           for _ in range(in_memory_batches)])
    sched = make_scheduler(cfg.sampler, teacher.scheduler_config)
    t0 = time.perf_counter()
    pool = TeacherPool(teacher, sched, cfg.sampler.scheduler, "dynamic", b, rho=cfg.rho, seed=cfg.seed, device=acc.device)
    pool_init_s = time.perf_counter() - t0
    live = PoolSource(pool)
    trainers = {}
    for mode in ("memory", "cache", "live"):
        trainers[mode], params = _trainer(cfg, spec, acc)
    rates = {m: [] for m in trainers}
    sources = {"memory": memory, "cache": cache_src, "live": live}
    for r in range(rounds):
        for mode in ("memory", "cache", "live"):
            rates[mode].append(_time(trainers[mode], sources[mode], steps, warmup if r == 0 else 0))
            log(f"round {r + 1}/{rounds} {mode:6s} {rates[mode][-1] * b:8.0f} records/s")
    med = {m: sorted(v)[len(v) // 2] for m, v in rates.items()}
    return {
        "batch_size": b, "steps_per_round": steps, "rounds": rounds, "num_workers": cfg.num_workers,
        "student_params": params, "teacher_params": count_params(teacher.unet),
        "steps_per_s": med, "records_per_s": {m: v * b for m, v in med.items()}, "rounds_steps_per_s": rates,
        "loadavg": os.getloadavg()[0],
        # paired per round: the machine's speed swings between rounds, and both halves of a ratio share one round
        "cache_vs_memory": statistics.median(c / m for c, m in zip(rates["cache"], rates["memory"])),
        "live_vs_memory": statistics.median(v / m for v, m in zip(rates["live"], rates["memory"])),
        "pool_size": pool.size, "pool_init_s": pool_init_s, "cache": str(cfg.cache),
        "cache_records": reader.num_records,
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} torch threads, device {acc.device}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def render(res: dict, command: str) -> str:
    rps, b = res["records_per_s"], res["batch_size"]
    return "\n".join([
        SECTION, "",
        f"Machine: {res['machine']}; {res['date']}. Student {res['student_params']:,} params, teacher "
        f"{res['teacher_params']:,}; batch {res['batch_size']}; {res['rounds']} interleaved rounds of "
        f"{res['steps_per_round']} steps per mode; records/s are the median round, ratios the median of the per-round ratios; cache reader with "
        f"{res['num_workers']} DataLoader worker(s), {res['cache_records']:,} records.", "",
        "| fed from | records/s | steps/s | vs in-memory |", "|---|---:|---:|---:|",
        f"| tensors already in memory | {rps['memory']:.0f} | {res['steps_per_s']['memory']:.2f} | 1.00 |",
        f"| cache (webdataset shards, shuffle buffer) | {rps['cache']:.0f} | {res['steps_per_s']['cache']:.2f} | "
        f"{res['cache_vs_memory']:.2f} |",
        f"| live teacher, dynamic pool ({res['pool_size']} samples) | {rps['live']:.0f} | {res['steps_per_s']['live']:.2f} | "
        f"{res['live_vs_memory']:.2f} |", "",
        "Per-round records/s (memory / cache / live): " + ", ".join(
            f"{m * b:.0f} / {c * b:.0f} / {v * b:.0f}" for m, c, v in zip(*(res["rounds_steps_per_s"][k] for k in ("memory", "cache", "live"))))
        + f"; load average at the end {res['loadavg']:.1f}.", "",
        f"Target: cache/in-memory ≥ 0.95 (the loader never stalls the trainer): "
        f"{'met' if res['cache_vs_memory'] >= 0.95 else 'NOT met'} ({res['cache_vs_memory']:.2f}). "
        f"The live pool's construction ({res['pool_init_s']:.1f} s) is not in its rate.", "",
        f"Command: `{command}`", "",
    ])


def write_section(md: str | Path, section: str) -> None:
    replace_section(md, SECTION, section)
