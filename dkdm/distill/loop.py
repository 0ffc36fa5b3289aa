"""`dkdm distill`: train a student on teacher outputs (DKDM) with accelerate: DDP, mixed precision,
gradient accumulation, EMA, warm-up, exact resume, Ctrl-C checkpoint, TensorBoard + CSV, sample grids."""

from __future__ import annotations

import hashlib
import math
import signal
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
from ..runtime import accelerator, atomic_write_json, check_world, use_cpu
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
from .settings import RESUME_KEYS, _StopFlag, row_split, validate
from .trainer import Batch, StudentTrainer

def _accelerator(cfg: DistillConfig):
    kw = {"log_with": "tensorboard", "project_dir": cfg.out} if use_tensorboard(cfg) else {}
    acc = accelerator(cpu=use_cpu(cfg.device), mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, **kw)
    check_world(acc.num_processes, "distill")
    return acc


class _Run:
    """Everything one distillation holds; the named steps below fill it in and read it (no closures)."""

    seen = seen_before = start = 0
    teacher = reader = emb = objective = teacher_tap = student_tap = sampling_card = None
    few_step = False


def distill(cfg: DistillConfig, progress: bool = True, on_step=None) -> dict:
    """Train and export a student; `on_step(step, batch, acc, student)` is a hook for tests and tools."""
    validate(cfg)
    run = _Run()
    run.cfg, run.out, run.acc = cfg, Path(cfg.out), _accelerator(cfg)
    torch.manual_seed(seeds.rank(cfg.seed, run.acc.process_index))  # init, dropout: sources have their own generators
    run.device, run.rank, run.rows = run.acc.device, run.acc.process_index, row_split(cfg)
    _open_inputs(run)
    _schedules(run)
    _build_student(run)
    _open_sources(run)
    _resume(run)
    summary, stop = _train(run, progress, on_step)
    if summary["interrupted"]:
        run.acc.end_training()
        if run.acc.is_main_process:
            print(f"interrupted by {signal.Signals(stop.signum).name}: checkpoint saved at step {summary['last_step']}; "
                  "continue with --resume latest", flush=True)
        raise Interrupted(stop.signum)
    if cfg.checkpoint_every and cfg.steps > run.start:
        _save_checkpoint(run, cfg.steps)
    if run.acc.is_main_process:
        _export(run, summary)
    run.acc.wait_for_everyone()
    run.acc.end_training()
    return summary


def _open_inputs(run: _Run) -> None:
    """The teacher (live sources, or a fingerprint check) and the cache reader."""
    cfg, rows = run.cfg, run.rows
    if cfg.teacher:  # live sources need it; with a cache it checks the fingerprint
        run.teacher = load_teacher(cfg.teacher, run.device)
    if cfg.cache and run.teacher is not None and run.teacher.latent:  # say "another VAE" before "another teacher"
        check_vae(read_manifest(Store(cfg.cache)), run.teacher, cfg.cache)
    if cfg.cache and (rows["cache"] > 0 or cfg.pool_init == "cache" and rows["live"] > 0 or run.teacher is None):
        run.reader = CacheReader(cfg.cache, expect_fingerprint=run.teacher.fingerprint if run.teacher else None)


def _schedules(run: _Run) -> None:
    """The walk the records come from (the cache's, or the live teacher's), the view/export scheduler and the
    training (DDPM) schedule."""
    cfg, reader, teacher = run.cfg, run.reader, run.teacher
    if reader is not None and (run.rows["cache"] > 0 or teacher is None):
        run.teacher_cfg = reader.manifest["teacher"]["config"]
        m_sched = reader.manifest["scheduler"]
        run.sched = getattr(diffusers, m_sched["class"]).from_config(m_sched["config"])
        run.sched.set_timesteps(reader.manifest["sampler"]["steps"])
        run.sampler_info, run.base_sched_cfg = reader.manifest["sampler"], m_sched["config"]
        # a live pool next to the cache walks the cache's schedule and coverage (old caches: grid)
        run.walk_kind, run.walk_cov = run.sampler_info["scheduler"], run.sampler_info.get("coverage", "grid")
    else:
        run.teacher_cfg = dict(teacher.unet.config)
        walk = coverage.sampler_for(cfg.sampler, int(teacher.scheduler_config.get("num_train_timesteps", 1000)))
        run.sched = make_scheduler(walk, teacher.scheduler_config)
        run.sampler_info, run.base_sched_cfg = cfgmod.to_dict(walk), teacher.scheduler_config
        run.walk_kind, run.walk_cov = walk.scheduler, walk.coverage
    # sample grids and the exported scheduler: a full-chain walk (DDPM over all T) would cost T steps per
    # image there, so they use the default DDIM sampler instead
    run.view_sched = run.sched if run.walk_cov != "full" else make_scheduler(cfgmod.SamplerConfig(), run.base_sched_cfg)
    # the training (DDPM) schedule: noising real images, and the posterior of the KL term
    run.noise_sched = diffusers.DDPMScheduler.from_config({k: v for k, v in run.base_sched_cfg.items() if not k.startswith("_")})


def _build_student(run: _Run) -> None:
    """Student, optimizer, LR schedule and EMA (after accelerate's prepare), and the few-step sampler it exports with."""
    cfg, teacher = run.cfg, run.teacher
    run.spec = student_spec_for(run.teacher_cfg, cfg.student)
    run.emb = conditioning_table(run.reader, teacher, run.rows, run.device)
    student, run.student_info = build_student(cfg, run.spec, teacher.unet if teacher else None, run.teacher_cfg)
    if cfg.student_init == "teacher":
        fewstep.init_from_teacher(student, teacher.unet)
        run.student_info = {**run.student_info, "init": "teacher"}
    elif cfg.student_init != "random":
        run.student_info = {**run.student_info, "init": fewstep.init_from_student(student, cfg.student_init)}
    run.few_step = fewstep.is_pairs(cfg)
    if run.few_step:  # few-step students sample with their own scheduler (v-prediction, DDIM or LCM trailing)
        run.walk_ts = [int(t) for t in run.sampler_info["timesteps"]]
        n_train = int(run.base_sched_cfg.get("num_train_timesteps", 1000))
        run.jump = fewstep.resolve_jump(cfg, run.walk_ts, n_train, run.base_sched_cfg)
        run.view_sched = fewstep.student_scheduler(cfg, run.base_sched_cfg, len(run.walk_ts), run.jump)
        run.sampling_card = fewstep.sampling_card(cfg, run.view_sched, run.walk_ts, n_train, run.base_sched_cfg, run.jump,
                                                  guided=run.emb is not None)
    run.channels = run.spec.in_channels
    if cfg.feature_kd > 0:
        blocks = feature_pairs(run.teacher_cfg, student, run.student_info)
        run.student_tap = BlockTap(student, list(blocks))
        run.teacher_tap = BlockTap(teacher.unet, list(blocks.values()), detach=True)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    run.lr_sched = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    run.student, run.opt = run.acc.prepare(student, opt)
    # after prepare: DDP has broadcast rank 0's weights, so every rank's EMA starts from the same student
    run.ema = EMAModel(run.acc.unwrap_model(run.student).parameters(), decay=cfg.ema_decay)
    run.ema.to(run.device)


def _open_sources(run: _Run) -> None:
    """Cache records (or trajectory pairs), the live pool, real images; the objective and the trainer."""
    cfg, rows, acc, rank, device = run.cfg, run.rows, run.acc, run.rank, run.device
    on_bad = "skip" if cfg.on_bad_shard == "skip" else "error"
    run.sources = sources = {}
    if rows["cache"] and run.few_step:
        sources["cache"] = PairSource(run.reader, rows["cache"], cfg.shuffle_buffer, cfg.seed, rank, acc.num_processes,
                                      cfg.num_workers, device, run.sched, run.jump, on_bad=on_bad,
                                      stride=fewstep.pair_stride(cfg, run.jump))
    elif rows["cache"]:
        sources["cache"] = CacheSource(run.reader, rows["cache"], cfg.shuffle_buffer, cfg.seed, rank, acc.num_processes,
                                       cfg.num_workers, device, on_bad=on_bad)
    if rows["live"]:
        pool = TeacherPool(run.teacher, run.sched, run.walk_kind, cfg.pool, rows["live"], rho=cfg.rho, eta=cfg.sampler.eta,
                           seed=cfg.seed, rank=rank, device=device, lazy=True, coverage=run.walk_cov)
        sources["live"] = PoolSource(pool)
    if rows["real"]:
        images = load_real_images(cfg.real, run.channels, run.spec.sample_size)
        sources["real"] = RealNoised(images, run.noise_sched, rows["real"], seed=seeds.real(cfg.seed, rank), device=device)
    if run.few_step:
        run.objective = fewstep.build_objective(cfg, acc.unwrap_model(run.student), run.noise_sched, run.channels,
                                                run.base_sched_cfg, len(run.walk_ts))
    if hasattr(run.objective, "state_dict"):  # e.g. the consistency target network: checkpointed with the data state
        sources["objective"] = run.objective
    run.trainer = StudentTrainer(acc, run.student, run.opt, run.lr_sched, run.ema, run.channels, run.noise_sched,
                                 kl_weight=cfg.kl_weight, feature_kd=cfg.feature_kd, student_tap=run.student_tap,
                                 clip=cfg.grad_clip, objective=run.objective)


def _resume(run: _Run) -> None:
    """Continue from a checkpoint that shares every setting the data stream depends on, or seed a live pool."""
    cfg, acc = run.cfg, run.acc
    resume_from = ckpt.resolve_resume(run.out, cfg.resume)
    run.resolved = cfgmod.to_dict(cfg)
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        diff = [k for k in RESUME_KEYS if state["config"].get(k) != run.resolved.get(k)]
        if diff or state["world"] != acc.num_processes:
            raise DkdmError(f"checkpoint {resume_from} was made with other settings ({', '.join(diff) or '-'}) or another "
                            f"number of processes ({state['world']}, now {acc.num_processes}); resume with the same ones")
        if state["step"] > cfg.steps:
            raise DkdmError(f"checkpoint {resume_from} is at step {state['step']}, past --steps {cfg.steps}")
        ckpt.load(acc, resume_from, run.ema, run.lr_sched, run.sources, opt=run.opt, batches_per_step=cfg.grad_accum)
        check_finite(acc.unwrap_model(run.student), f"checkpoint {resume_from}")
        run.start, run.seen_before = state["step"], state["records_seen"]
    elif run.rows["live"] and cfg.pool_init == "cache":
        pool = run.sources["live"].pool
        seed_reader = run.reader.loader(min(256, pool.size), num_workers=0, shuffle_buffer=cfg.shuffle_buffer,
                                        seed=seeds.pool_init(cfg.seed), rank=run.rank, world=acc.num_processes)
        pool.seed_from(seed_reader)


def _next_batch(run: _Run) -> Batch:
    """One micro-batch: rows from the cache, the live pool and real images, in that order."""
    cfg, rows, sources = run.cfg, run.rows, run.sources
    if run.few_step:
        return fewstep.pair_batch(next(sources["cache"]), run.emb)
    parts = [next(sources[k]) for k in ("cache", "live") if k in sources]
    cond = run.emb[parts[0][3]] if run.emb is not None else None  # conditional: the cache is the only source
    if cfg.feature_kd > 0 and "cache" in sources:
        run.teacher(parts[0][0], parts[0][1], cond)  # one forward on the cached x_t: the tap keeps its block outputs
    feats = run.teacher_tap.take() if cfg.feature_kd > 0 else None
    xs, ts, outs = [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]
    c_out = min((o.shape[1] for o in outs), default=run.channels)
    teacher_out = torch.cat([o[:, :c_out] for o in outs]) if outs else None
    eps = [o[:, :run.channels] for o in outs]
    if "real" in sources:
        xr, tr, nr = next(sources["real"])
        xs, ts, eps = xs + [xr], ts + [tr], eps + [nr]
    live_rows = slice(0, rows["cache"]) if cfg.feature_kd > 0 and "cache" in sources else \
        slice(rows["cache"], rows["cache"] + rows["live"])
    return Batch(torch.cat(xs), torch.cat(ts), torch.cat(eps), teacher_out, feats, live_rows, cond)


def _save_checkpoint(run: _Run, step: int) -> None:
    acc = run.acc
    ckpt.save(acc, run.out / "checkpoints" / f"step-{step:08d}", step, run.ema, run.lr_sched, run.sources,
              {"config": run.resolved, "world": acc.num_processes, "records_seen": run.seen})
    if acc.is_main_process:
        ckpt.prune(run.out, run.cfg.checkpoints_keep)


def _train(run: _Run, progress: bool, on_step) -> tuple[dict, "_StopFlag"]:
    """The optimizer steps from run.start to cfg.steps: logs, sample grids, checkpoints, a clean stop on a signal."""
    cfg, acc, out = run.cfg, run.acc, run.out
    log = CsvLog(out / "distill_log.csv", keep_before=run.start) if acc.is_main_process else None
    if acc.is_main_process:
        atomic_write_json(out / "distill_config.json", run.resolved)
    start_trackers(acc, cfg)
    run.seen, t0 = run.seen_before, time.time()
    bar = progress_bar(cfg.steps, "distill", disable=not progress or not acc.is_main_process, unit="step")
    bar.update(run.start)
    interrupted, step, loss = False, run.start, float("nan")
    with _StopFlag() as stop:
        for step in range(run.start, cfg.steps):
            micro = [_next_batch(run) for _ in range(cfg.grad_accum)]
            if on_step is not None:
                on_step(step, micro, acc, run.student)
            loss, parts = run.trainer.step(micro)
            # every rank agrees (one rank raising alone would hang DDP); nothing after this step is saved or exported
            if _any_rank(acc, not math.isfinite(loss)):
                acc.end_training()
                last = ckpt.checkpoints(out)
                raise NonFiniteError(f"the loss is {loss} (NaN/Inf on some rank) at step {step}: training diverged; nothing "
                                     f"exported. The last good checkpoint is {last[-1] if last else 'none'}: lower --lr, or "
                                     "check the cache with `dkdm cache verify --deep`")
            run.seen += cfg.batch_size * cfg.grad_accum * acc.num_processes
            rate = (run.seen - run.seen_before) / (time.time() - t0)
            done = step + 1
            if step % cfg.log_every == 0 or done == cfg.steps:
                row = {"step": step, "loss": loss, **parts, "lr": run.lr_sched.get_last_lr()[0], "records_per_s": rate}
                acc.log(row, step=step)
                if log is not None:
                    log.write(row)
            bar.update(1, loss=loss, rec_s=rate)
            if cfg.sample_every and done % cfg.sample_every == 0 and acc.is_main_process and not is_latent_cache(run.reader):
                save_sample_grid(acc.unwrap_model(run.student), run.ema, run.view_sched, run.spec,
                                 out / "samples" / f"step-{done:08d}.png", run.device, cond=run.emb)
            if _any_rank(acc, stop.set):
                interrupted = True
                _save_checkpoint(run, done)
                break
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _save_checkpoint(run, done)
    bar.close()
    seconds = time.time() - t0
    summary = {"steps": cfg.steps, "start_step": run.start, "last_step": step + 1 if cfg.steps > run.start else run.start,
               "seconds": seconds, "records_per_s": (run.seen - run.seen_before) / max(seconds, 1e-9), "final_loss": loss,
               "source": cfg.source, "pool": cfg.pool if run.rows["live"] else None, "rows": run.rows,
               "teacher_forwards": run.sources["live"].pool.teacher_forwards if "live" in run.sources else 0,
               "interrupted": interrupted, "world": acc.num_processes,
               # every rank's EMA must be the same model (DDP keeps the weights equal; the EMA must start equal too)
               "ema_sha256": tensors_sha256(run.ema.shadow_params)}
    return summary, stop


def _export(run: _Run, summary: dict) -> None:
    """The student (EMA or raw weights) as a diffusers folder with its card; latent students as a whole pipeline."""
    cfg, reader, rows = run.cfg, run.reader, run.rows
    final = run.acc.unwrap_model(run.student)
    if cfg.export_ema:
        run.ema.copy_to(final.parameters())
    final.eval()
    card = {"teacher": run.teacher.describe() if run.teacher else reader.manifest["teacher"],
            "cache_id": reader.manifest["cache_id"] if reader else None,
            # the noise it was trained on: `dkdm evaluate` refuses to score it on the same seeds
            "trained_on": seeds.trained_on(reader.manifest)
            if reader is not None and (rows["cache"] or rows["live"] and cfg.pool_init == "cache") else None,
            "weights": "ema" if cfg.export_ema else "raw",
            "sampler": run.sampler_info, "params": count_params(final), "config": run.resolved, "summary": summary,
            "student": run.student_info}
    if run.few_step:
        card["sampling"] = run.sampling_card
    card["objective"] = {"name": cfg.objective, "units": run.trainer.objective.units}
    card["teacher"] = {k: v for k, v in card["teacher"].items() if k != "config"}
    check_finite(final, "the trained student")
    export_student(final, run.view_sched, run.out / "student", card)
    if is_latent_cache(reader):  # a full StableDiffusionPipeline folder, grid decoded through the VAE
        export_latent_student(final, run.view_sched, reader, run.teacher, run.out, run.device,
                              guidance_scale=run.sampling_card.get("guidance_scale") if run.few_step else None)
    else:
        save_sample_grid(final, None, run.view_sched, run.spec, run.out / "student_samples.png", run.device, cond=run.emb)


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
