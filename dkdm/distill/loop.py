"""`dkdm distill`: train a student on teacher outputs (DKDM) with accelerate: DDP, mixed precision,
gradient accumulation, EMA, warm-up, exact resume, Ctrl-C checkpoint, TensorBoard + CSV, sample grids."""

from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
from pathlib import Path

import diffusers
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from .. import config as cfgmod
from .. import coverage, seeds
from ..cache.embeddings import read_embeddings
from ..cache.reader import CacheReader
from ..config import DistillConfig
from ..cache.manifest import read_manifest
from ..cache.store import Store
from ..errors import DkdmError, Interrupted, NonFiniteError
from ..latent import check_vae, export_latent_student, is_latent_cache
from ..progress import progress_bar
from ..runtime import accelerator, atomic_write_json, check_world, positive, use_cpu
from ..schedulers import make_scheduler
from ..students import build_student, count_params, student_spec_for
from ..teacher import load_teacher
from ..weights import check_finite
from . import checkpoint as ckpt
from . import fewstep
from .export import export_student
from .features import BlockTap, feature_pairs
from .observe import CsvLog, save_sample_grid, start_trackers, use_tensorboard
from .pool import TeacherPool
from .real import RealNoised, load_real_images
from .sources import CacheSource, PairSource, PoolSource
from .trainer import Batch, StudentTrainer

SOURCES = ("cache", "live", "both")
PRECISIONS = ("no", "fp16", "bf16")
# settings a resumed run must share with the checkpoint, or the data stream would not line up; num_workers too:
# each loader worker reads its own shard slice with its own generator
RESUME_KEYS = ("source", "sampler", "pool", "rho", "batch_size", "grad_accum", "real_ratio", "seed", "shuffle_buffer", "cache", "real",
               "num_workers",
               "objective", "jump", "fewstep_steps")


def validate(cfg: DistillConfig) -> None:
    fewstep.validate(cfg)
    for name in ("steps", "batch_size", "shuffle_buffer", "grad_accum", "log_every"):
        positive(name, getattr(cfg, name))
    if cfg.source not in SOURCES:
        raise DkdmError(f"unknown --source {cfg.source!r}; choose one of {SOURCES}")
    if not 0.0 <= cfg.real_ratio <= 1.0:
        raise DkdmError(f"--real-ratio must lie in [0, 1], got {cfg.real_ratio}")
    if cfg.real_ratio > 0 and not cfg.real:
        raise DkdmError("--real-ratio > 0 needs --real (digits, a folder of images, or a webdataset .tar)")
    if cfg.real_ratio < 1:
        if cfg.source in ("cache", "both") and not cfg.cache:
            raise DkdmError(f"--source {cfg.source} needs --cache PATH_OR_URL")
        if cfg.source in ("live", "both") and not cfg.teacher:
            raise DkdmError(f"--source {cfg.source} needs --teacher")
    elif not (cfg.teacher or cfg.cache):
        raise DkdmError("--real-ratio 1 still needs --teacher (or --cache) for the image geometry and noise schedule")
    for name in ("checkpoint_every", "sample_every"):
        if getattr(cfg, name) < 0:
            raise DkdmError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.rho <= 0:
        raise DkdmError(f"--rho must be positive, got {cfg.rho}")
    if cfg.pool_init not in ("teacher", "cache"):
        raise DkdmError(f"--pool-init must be teacher or cache, got {cfg.pool_init!r}")
    if cfg.pool_init == "cache" and not cfg.cache:
        raise DkdmError("--pool-init cache needs --cache")
    if cfg.on_bad_shard not in ("stop", "skip"):
        raise DkdmError(f"--on-bad-shard must be stop or skip, got {cfg.on_bad_shard!r}")
    if not (0 < cfg.lr <= 10) or not (0 <= cfg.ema_decay < 1) or cfg.warmup_steps < 0 or cfg.num_workers < 0:
        raise DkdmError(f"nonsense setting: lr {cfg.lr} must be in (0, 10], ema_decay {cfg.ema_decay} in [0, 1), "
                        f"warmup_steps {cfg.warmup_steps} and num_workers {cfg.num_workers} >= 0")
    if cfg.batch_size * cfg.grad_accum > 1 << 20 or cfg.steps > 1 << 31 or cfg.shuffle_buffer > 1 << 24:
        raise DkdmError(f"batch size {cfg.batch_size} x {cfg.grad_accum}, steps {cfg.steps} or shuffle buffer "
                        f"{cfg.shuffle_buffer} is absurdly large; check the flags")
    if not (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise DkdmError(f"--grad-clip must be a finite number >= 0 (0 = no clipping), got {cfg.grad_clip}")
    if cfg.mixed_precision not in PRECISIONS:
        raise DkdmError(f"--mixed-precision must be one of {PRECISIONS}, got {cfg.mixed_precision!r}")
    if cfg.feature_kd > 0 and (cfg.source == "both" or cfg.real_ratio >= 1 or not cfg.teacher):
        raise DkdmError("--feature-kd needs --teacher and --source live or cache: the teacher's block outputs on the "
                        "same inputs (one teacher forward per cached batch)")


def row_split(cfg: DistillConfig) -> dict:
    """How many rows of each micro-batch come from the cache, the live pool and real images."""
    n_real = int(round(cfg.real_ratio * cfg.batch_size))
    n_d = cfg.batch_size - n_real
    n_cache = {"cache": n_d, "live": 0, "both": n_d // 2}[cfg.source]
    return {"cache": n_cache, "live": n_d - n_cache, "real": n_real}


def _accelerator(cfg: DistillConfig):
    kw = {"log_with": "tensorboard", "project_dir": cfg.out} if use_tensorboard(cfg) else {}
    acc = accelerator(cpu=use_cpu(cfg.device), mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, **kw)
    check_world(acc.num_processes, "distill")
    return acc


class _StopFlag:
    """First Ctrl-C or SIGTERM (what a cluster sends before pre-empting) asks for a checkpoint at the end of the
    current step; a second signal aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.set, self.signum, self._old = False, 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, _frame):
        if self.set:
            raise Interrupted(signum)
        self.set, self.signum = True, signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def distill(cfg: DistillConfig, progress: bool = True, on_step=None) -> dict:
    """Train and export a student; `on_step(step, batch, acc, student)` is a hook for tests and tools."""
    validate(cfg)
    out = Path(cfg.out)
    acc = _accelerator(cfg)
    torch.manual_seed(seeds.rank(cfg.seed, acc.process_index))  # init, dropout: sources have their own generators
    device, rank = acc.device, acc.process_index
    rows = row_split(cfg)
    needs_teacher = rows["live"] > 0 or bool(cfg.teacher)
    teacher = load_teacher(cfg.teacher, device) if needs_teacher and cfg.teacher else None
    reader = None
    if cfg.cache and teacher is not None and teacher.latent:  # say "another VAE" before "another teacher"
        check_vae(read_manifest(Store(cfg.cache)), teacher, cfg.cache)
    if cfg.cache and (rows["cache"] > 0 or cfg.pool_init == "cache" and rows["live"] > 0 or teacher is None):
        reader = CacheReader(cfg.cache, expect_fingerprint=teacher.fingerprint if teacher else None)
    if reader is not None and (rows["cache"] > 0 or teacher is None):
        teacher_cfg = reader.manifest["teacher"]["config"]
        m_sched = reader.manifest["scheduler"]
        sched = getattr(diffusers, m_sched["class"]).from_config(m_sched["config"])
        sched.set_timesteps(reader.manifest["sampler"]["steps"])
        sampler_info, base_sched_cfg = reader.manifest["sampler"], m_sched["config"]
        # a live pool next to the cache walks the cache's schedule and coverage (old caches: grid)
        walk_kind, walk_cov = sampler_info["scheduler"], sampler_info.get("coverage", "grid")
    else:
        teacher_cfg = dict(teacher.unet.config)
        walk = coverage.sampler_for(cfg.sampler, int(teacher.scheduler_config.get("num_train_timesteps", 1000)))
        sched = make_scheduler(walk, teacher.scheduler_config)
        sampler_info, base_sched_cfg = cfgmod.to_dict(walk), teacher.scheduler_config
        walk_kind, walk_cov = walk.scheduler, walk.coverage
    # sample grids and the exported scheduler: a full-chain walk (DDPM over all T) would cost T steps per
    # image there, so they use the default DDIM sampler instead
    view_sched = sched if walk_cov != "full" else make_scheduler(cfgmod.SamplerConfig(), base_sched_cfg)
    # the training (DDPM) schedule: noising real images, and the posterior of the KL term
    noise_sched = diffusers.DDPMScheduler.from_config({k: v for k, v in base_sched_cfg.items() if not k.startswith("_")})
    spec = student_spec_for(teacher_cfg, cfg.student)
    emb = conditioning_table(reader, teacher, rows, device)
    student, student_info = build_student(cfg, spec, teacher.unet if teacher else None, teacher_cfg)
    if cfg.student_init == "teacher":
        fewstep.init_from_teacher(student, teacher.unet)
        student_info = {**student_info, "init": "teacher"}
    few_step = fewstep.is_pairs(cfg)
    if few_step:  # few-step students sample with their own scheduler (v-prediction, DDIM or LCM trailing)
        walk_ts, n_train = [int(t) for t in sampler_info["timesteps"]], int(base_sched_cfg.get("num_train_timesteps", 1000))
        jump = fewstep.resolve_jump(cfg, walk_ts, n_train, base_sched_cfg)
        view_sched = fewstep.student_scheduler(cfg, base_sched_cfg, len(walk_ts), jump)
        sampling_card = fewstep.sampling_card(cfg, view_sched, walk_ts, n_train, base_sched_cfg, jump,
                                              guided=emb is not None)
    channels = spec.in_channels
    student_tap = None
    if cfg.feature_kd > 0:
        pairs = feature_pairs(teacher_cfg, student, student_info)
        student_tap = BlockTap(student, list(pairs))
        teacher_tap = BlockTap(teacher.unet, list(pairs.values()), detach=True)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_sched = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    student, opt = acc.prepare(student, opt)
    # after prepare: DDP has broadcast rank 0's weights, so every rank's EMA starts from the same student
    ema = EMAModel(acc.unwrap_model(student).parameters(), decay=cfg.ema_decay)
    ema.to(device)

    sources = {}
    if rows["cache"] and few_step:
        sources["cache"] = PairSource(reader, rows["cache"], cfg.shuffle_buffer, cfg.seed, rank, acc.num_processes,
                                      cfg.num_workers, device, sched, jump, on_bad="skip" if cfg.on_bad_shard == "skip" else "error")
    elif rows["cache"]:
        sources["cache"] = CacheSource(reader, rows["cache"], cfg.shuffle_buffer, cfg.seed, rank, acc.num_processes,
                                       cfg.num_workers, device, on_bad="skip" if cfg.on_bad_shard == "skip" else "error")
    if rows["live"]:
        pool = TeacherPool(teacher, sched, walk_kind, cfg.pool, rows["live"], rho=cfg.rho, eta=cfg.sampler.eta,
                           seed=cfg.seed, rank=rank, device=device, lazy=True, coverage=walk_cov)
        sources["live"] = PoolSource(pool)
    if rows["real"]:
        images = load_real_images(cfg.real, channels, spec.sample_size)
        sources["real"] = RealNoised(images, noise_sched, rows["real"], seed=seeds.real(cfg.seed, rank), device=device)

    objective = fewstep.build_objective(cfg, acc.unwrap_model(student), noise_sched, channels, base_sched_cfg,
                                        len(walk_ts)) if few_step else None
    if hasattr(objective, "state_dict"):  # e.g. the consistency target network: checkpointed with the data state
        sources["objective"] = objective
    trainer = StudentTrainer(acc, student, opt, lr_sched, ema, channels, noise_sched, kl_weight=cfg.kl_weight,
                             feature_kd=cfg.feature_kd, student_tap=student_tap, clip=cfg.grad_clip,
                             objective=objective)
    resume_from = ckpt.resolve_resume(out, cfg.resume)
    start, seen_before = 0, 0
    resolved = cfgmod.to_dict(cfg)
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        diff = [k for k in RESUME_KEYS if state["config"].get(k) != resolved.get(k)]
        if diff or state["world"] != acc.num_processes:
            raise DkdmError(f"checkpoint {resume_from} was made with other settings ({', '.join(diff) or '-'}) or another "
                            f"number of processes ({state['world']}, now {acc.num_processes}); resume with the same ones")
        if state["step"] > cfg.steps:
            raise DkdmError(f"checkpoint {resume_from} is at step {state['step']}, past --steps {cfg.steps}")
        ckpt.load(acc, resume_from, ema, lr_sched, sources, opt=opt, batches_per_step=cfg.grad_accum)
        check_finite(acc.unwrap_model(student), f"checkpoint {resume_from}")
        start, seen_before = state["step"], state["records_seen"]
    elif rows["live"] and cfg.pool_init == "cache":
        seed_reader = reader.loader(min(256, sources["live"].pool.size), num_workers=0, shuffle_buffer=cfg.shuffle_buffer, seed=seeds.pool_init(cfg.seed), rank=rank,
                                    world=acc.num_processes)
        sources["live"].pool.seed_from(seed_reader)

    def next_batch() -> Batch:
        if few_step:
            return fewstep.pair_batch(next(sources["cache"]), emb)
        parts = [next(sources[k]) for k in ("cache", "live") if k in sources]
        cond = emb[parts[0][3]] if emb is not None else None  # conditional: the cache is the only source
        if cfg.feature_kd > 0 and "cache" in sources:
            teacher(parts[0][0], parts[0][1], cond)  # one forward on the cached x_t: the tap keeps its block outputs
        feats = teacher_tap.take() if cfg.feature_kd > 0 else None
        xs, ts, outs = [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]
        c_out = min((o.shape[1] for o in outs), default=channels)
        teacher_out = torch.cat([o[:, :c_out] for o in outs]) if outs else None
        eps = [o[:, :channels] for o in outs]
        if "real" in sources:
            xr, tr, nr = next(sources["real"])
            xs, ts, eps = xs + [xr], ts + [tr], eps + [nr]
        live_rows = slice(0, rows["cache"]) if cfg.feature_kd > 0 and "cache" in sources else \
            slice(rows["cache"], rows["cache"] + rows["live"])
        return Batch(torch.cat(xs), torch.cat(ts), torch.cat(eps), teacher_out, feats, live_rows, cond)

    def save_checkpoint(step: int) -> None:
        ckpt.save(acc, out / "checkpoints" / f"step-{step:08d}", step, ema, lr_sched, sources,
                  {"config": resolved, "world": acc.num_processes, "records_seen": seen})
        if acc.is_main_process:
            ckpt.prune(out, cfg.checkpoints_keep)

    log = CsvLog(out / "distill_log.csv", keep_before=start) if acc.is_main_process else None
    if acc.is_main_process:
        atomic_write_json(out / "distill_config.json", resolved)
    start_trackers(acc, cfg)
    seen, t0 = seen_before, time.time()
    bar = progress_bar(cfg.steps, "distill", disable=not progress or not acc.is_main_process, unit="step")
    bar.update(start)
    interrupted, step, loss = False, start, float("nan")
    with _StopFlag() as stop:
        for step in range(start, cfg.steps):
            micro = [next_batch() for _ in range(cfg.grad_accum)]
            if on_step is not None:
                on_step(step, micro, acc, student)
            loss, parts = trainer.step(micro)
            # every rank agrees (one rank raising alone would hang DDP); nothing after this step is saved or exported
            if _any_rank(acc, not math.isfinite(loss)):
                acc.end_training()
                last = ckpt.checkpoints(out)
                raise NonFiniteError(f"the loss is {loss} (NaN/Inf on some rank) at step {step}: training diverged; nothing "
                                     f"exported. The last good checkpoint is {last[-1] if last else 'none'}: lower --lr, or "
                                     "check the cache with `dkdm cache verify --deep`")
            seen += cfg.batch_size * cfg.grad_accum * acc.num_processes
            rate = (seen - seen_before) / (time.time() - t0)
            done = step + 1
            if step % cfg.log_every == 0 or done == cfg.steps:
                row = {"step": step, "loss": loss, **parts, "lr": lr_sched.get_last_lr()[0], "records_per_s": rate}
                acc.log(row, step=step)
                if log is not None:
                    log.write(row)
            bar.update(1, loss=loss, rec_s=rate)
            if cfg.sample_every and done % cfg.sample_every == 0 and acc.is_main_process and not is_latent_cache(reader):
                save_sample_grid(acc.unwrap_model(student), ema, view_sched, spec, out / "samples" / f"step-{done:08d}.png", device,
                                 cond=emb)
            if _any_rank(acc, stop.set):
                interrupted = True
                save_checkpoint(done)
                break
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_checkpoint(done)
    bar.close()
    seconds = time.time() - t0
    summary = {"steps": cfg.steps, "start_step": start, "last_step": step + 1 if cfg.steps > start else start,
               "seconds": seconds, "records_per_s": (seen - seen_before) / max(seconds, 1e-9), "final_loss": loss,
               "source": cfg.source, "pool": cfg.pool if rows["live"] else None, "rows": rows,
               "teacher_forwards": sources["live"].pool.teacher_forwards if "live" in sources else 0,
               "interrupted": interrupted, "world": acc.num_processes,
               # every rank's EMA must be the same model (DDP keeps the weights equal; the EMA must start equal too)
               "ema_sha256": tensors_sha256(ema.shadow_params)}
    if interrupted:
        acc.end_training()
        if acc.is_main_process:
            print(f"interrupted by {signal.Signals(stop.signum).name}: checkpoint saved at step {step + 1}; "
                  "continue with --resume latest", flush=True)
        raise Interrupted(stop.signum)
    if cfg.checkpoint_every and cfg.steps > start:
        save_checkpoint(cfg.steps)
    if acc.is_main_process:
        final = acc.unwrap_model(student)
        if cfg.export_ema:
            ema.copy_to(final.parameters())
        final.eval()
        card = {"teacher": teacher.describe() if teacher else reader.manifest["teacher"],
                "cache_id": reader.manifest["cache_id"] if reader else None,
                # the noise it was trained on: `dkdm evaluate` refuses to score it on the same seeds
                "trained_on": seeds.trained_on(reader.manifest)
                if reader is not None and (rows["cache"] or rows["live"] and cfg.pool_init == "cache") else None, "weights": "ema" if cfg.export_ema else "raw",
                "sampler": sampler_info, "params": count_params(final), "config": resolved, "summary": summary,
                "student": student_info}
        if few_step:
            card["sampling"] = sampling_card
        card["objective"] = {"name": cfg.objective, "units": trainer.objective.units}
        card["teacher"] = {k: v for k, v in card["teacher"].items() if k != "config"}
        check_finite(final, "the trained student")
        export_student(final, view_sched, out / "student", card)
        if is_latent_cache(reader):  # a full StableDiffusionPipeline folder, grid decoded through the VAE
            export_latent_student(final, view_sched, reader, teacher, out, device,
                                  guidance_scale=sampling_card.get("guidance_scale") if few_step else None)
        else:
            save_sample_grid(final, None, view_sched, spec, out / "student_samples.png", device, cond=emb)
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def conditioning_table(reader, teacher, rows: dict, device) -> torch.Tensor | None:
    """Prompt embeddings (n_prompts, seq, dim) of a text-conditioned cache, indexed by each record's `cond`.
    The student learns the cached (guided) target, so it samples without classifier-free guidance."""
    conditional = bool(reader is not None and reader.manifest.get("embeddings")) or bool(teacher and teacher.conditional)
    if not conditional:
        return None
    if rows["live"] or rows["real"] or reader is None or not reader.manifest.get("embeddings"):
        raise DkdmError("a text-conditioned teacher is distilled from its cache only: use --source cache --cache URL and "
                        "no --real (live conditional pools and captioned real images are not supported yet)")
    table = read_embeddings(reader.store, reader.manifest["embeddings"])
    if table["sha256"] != reader.manifest["embeddings"]["sha256"]:
        raise DkdmError(f"{reader.store.url}: embeddings.zarr is not the one the manifest recorded (sha256 differs)")
    return table["emb"].to(device)


def tensors_sha256(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _any_rank(acc, flag: bool) -> bool:
    """Ranks agree on stopping, or DDP would hang with one rank gone: accelerate's trigger is one all-reduce."""
    if flag:
        acc.set_trigger()
    return acc.check_trigger()
