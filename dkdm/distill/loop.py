"""`dkdm distill`: train a student on teacher outputs (DKDM) with accelerate."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import diffusers
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from .. import config as cfgmod
from ..cache.reader import CacheReader
from ..config import DistillConfig
from ..errors import DkdmError
from ..imaging import grid, save_png
from ..progress import progress_bar
from ..runtime import atomic_write_json, positive
from ..sampling import sample, unet_fn
from ..schedulers import make_scheduler
from ..students import build_unet, count_params, student_spec_for
from ..teacher import load_teacher
from .export import export_student
from .losses import eps_mse
from .pool import TeacherPool
from .sources import cache_batches, mixed_batches, pool_batches

SOURCES = ("cache", "live", "both")


def validate(cfg: DistillConfig) -> None:
    for name in ("steps", "batch_size", "shuffle_buffer"):
        positive(name, getattr(cfg, name))
    if cfg.source not in SOURCES:
        raise DkdmError(f"unknown --source {cfg.source!r}; choose one of {SOURCES}")
    if cfg.source in ("cache", "both") and not cfg.cache:
        raise DkdmError(f"--source {cfg.source} needs --cache PATH_OR_URL")
    if cfg.source in ("live", "both") and not cfg.teacher:
        raise DkdmError(f"--source {cfg.source} needs --teacher")
    if not 0 < cfg.rho:
        raise DkdmError(f"--rho must be positive, got {cfg.rho}")


def distill(cfg: DistillConfig, progress: bool = True) -> dict:
    validate(cfg)
    acc = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    torch.manual_seed(cfg.seed + acc.process_index)
    device = acc.device
    teacher = load_teacher(cfg.teacher, device) if cfg.teacher else None
    reader = None
    if cfg.source in ("cache", "both"):
        reader = CacheReader(cfg.cache, expect_fingerprint=teacher.fingerprint if teacher else None)
        teacher_cfg = reader.manifest["teacher"]["config"]
        m_sched = reader.manifest["scheduler"]
        sched = getattr(diffusers, m_sched["class"]).from_config(m_sched["config"])
        sched.set_timesteps(reader.manifest["sampler"]["steps"])
        sampler_info = reader.manifest["sampler"]
    else:
        teacher_cfg = dict(teacher.unet.config)
        sched = make_scheduler(cfg.sampler, teacher.scheduler_config)
        sampler_info = cfgmod.to_dict(cfg.sampler)
    spec = student_spec_for(teacher_cfg, cfg.student)
    student = build_unet(spec)
    channels = spec.in_channels
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_sched = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    ema = EMAModel(student.parameters(), decay=cfg.ema_decay)
    student, opt = acc.prepare(student, opt)
    ema.to(device)

    batches = _batches(cfg, reader, teacher, sched, acc)
    out = Path(cfg.out)
    log_rows, t0, seen = [], time.time(), 0
    bar = progress_bar(cfg.steps, "distill", disable=not progress or not acc.is_main_process)
    for step in range(cfg.steps):
        x, t, target = next(batches)
        pred = student(x, t).sample
        loss = eps_mse(pred, target, channels)
        acc.backward(loss)
        acc.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(student.parameters())
        seen += len(x) * acc.num_processes
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log_rows.append({"step": step, "loss": loss.item(), "records_per_s": seen / (time.time() - t0)})
        bar.update(1, loss=loss.item(), rec_s=seen / (time.time() - t0))
    bar.close()
    seconds = time.time() - t0
    summary = {"steps": cfg.steps, "seconds": seconds, "records_per_s": seen / seconds, "final_loss": log_rows[-1]["loss"],
               "source": cfg.source, "pool": cfg.pool if cfg.source != "cache" else None}
    if acc.is_main_process:
        final = acc.unwrap_model(student)
        ema.copy_to(final.parameters())
        final.eval()
        card = {"teacher": teacher.describe() if teacher else reader.manifest["teacher"],
                "cache_id": reader.manifest["cache_id"] if reader else None,
                "sampler": sampler_info, "params": count_params(final), "config": cfgmod.to_dict(cfg), "summary": summary}
        card["teacher"].pop("config", None)
        export_student(final, sched, out / "student", card)
        _write_log(out / "distill_log.csv", log_rows)
        atomic_write_json(out / "distill_config.json", cfgmod.to_dict(cfg))
        imgs = sample(unet_fn(final), sched, range(64), (channels, spec.sample_size, spec.sample_size), device=device)
        save_png(grid(imgs, ncol=8, scale=4), out / "student_samples.png")
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def _batches(cfg, reader, teacher, sched, acc):
    def cache_src():
        return cache_batches(reader, cfg.batch_size, cfg.shuffle_buffer, cfg.seed, acc.process_index,
                             acc.num_processes, cfg.num_workers, acc.device)

    def live_src():
        pool = TeacherPool(teacher, sched, cfg.sampler.scheduler, cfg.pool, cfg.batch_size, rho=cfg.rho,
                           eta=cfg.sampler.eta, seed=cfg.seed * 1000 + acc.process_index, device=acc.device)
        return pool_batches(pool)

    if cfg.source == "cache":
        return cache_src()
    if cfg.source == "live":
        return live_src()
    return mixed_batches(cache_src(), live_src())


def _write_log(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
