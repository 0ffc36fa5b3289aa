"""`dkdm generate`: walk teacher trajectories and write them as cache records, resumably."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings

import numpy as np
import torch

from .cache import backend
from .cache import records as rec
from .cache.embeddings import Conditioning, read_prompts
from .cache.manifest import SHARD_DIR, make_identity, read_manifest, read_sidecars, seal, shard_name, write_manifest
from .cache.store import Store
from .config import GenerateConfig
from .cache.limits import check
from .errors import DkdmError, NonFiniteError
from .latent import PairedGuidance
from .progress import progress_bar
from .runtime import check_world, pick_device, positive
from . import seeds
from .sampling import sample
from . import coverage
from .schedulers import clipped_eps, make_scheduler, stable_scheduler
from .teacher import load_teacher

PAIRED_TARGETS = "eps, unguided: per step one record for the prompt's row and one for the \"\" row"


def parse_keep(spec: str, steps: int) -> list[int]:
    """Which step indices along a trajectory become records: all | every:K | first:N | last:N | i,j,k."""
    spec = spec.strip()
    try:
        if spec == "all":
            kept = list(range(steps))
        elif spec.startswith("every:"):
            k = int(spec[6:])
            positive("keep every:K", k)
            kept = list(range(0, steps, k))
        elif spec.startswith("first:"):
            kept = list(range(min(steps, int(spec[6:]))))
        elif spec.startswith("last:"):
            kept = list(range(max(0, steps - int(spec[5:])), steps))
        else:
            kept = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError as exc:
        raise DkdmError(f"bad --keep {spec!r}: use all, every:K, first:N, last:N or a comma list of step indices") from exc
    if not kept or kept[0] < 0 or kept[-1] >= steps:
        raise DkdmError(f"--keep {spec!r} selects no valid step index in [0, {steps})")
    return kept


def validate(cfg: GenerateConfig) -> None:
    for name in ("trajectories", "shard_size", "batch_size"):
        positive(name, getattr(cfg, name))
    positive("steps", cfg.sampler.steps)
    check("steps", cfg.sampler.steps, "--steps")
    check("shard_records", cfg.shard_size, "--shard-size")
    check("shards", math.ceil(cfg.trajectories / cfg.shard_size), "shards (--trajectories / --shard-size)")
    check("records", cfg.trajectories * cfg.sampler.steps, "records (--trajectories x --steps)")
    if cfg.batch_size > 1 << 16:
        raise DkdmError(f"--batch-size {cfg.batch_size} is absurd for a teacher walk; use at most {1 << 16}")
    if not (math.isfinite(cfg.sampler.eta) and 0 <= cfg.sampler.eta <= 1):
        raise DkdmError(f"--eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {cfg.sampler.eta}")
    if not math.isfinite(cfg.guidance_scale):
        raise DkdmError(f"--guidance-scale must be finite, got {cfg.guidance_scale}")
    if cfg.format not in backend.FORMATS:
        raise DkdmError(f"unknown cache format {cfg.format!r}; choose one of {', '.join(backend.FORMATS)}")
    if cfg.guidance_scale < 1.0:
        raise DkdmError(f"--guidance-scale must be >= 1 (1 = no classifier-free guidance), got {cfg.guidance_scale}")
    if cfg.dtype not in rec.STORAGE_DTYPES:
        raise DkdmError(f"unsupported --dtype {cfg.dtype!r}; choose one of {sorted(rec.STORAGE_DTYPES)}")
    if cfg.dtype == "bfloat16":  # 8 mantissa bits: near t = 0, x_t differs from x_0 by less than bf16 resolves
        warnings.warn("--dtype bfloat16 keeps 8 mantissa bits: near t = 0 the x_t records lose the eps signal "
                      "(x_t - x_0 is below bf16's resolution); prefer float16 or float32", stacklevel=2)


def prepare_store(store: Store, identity: dict) -> None:
    """Create the cache, or check an existing one is this same cache (same teacher and settings)."""
    if store.exists("manifest.json"):
        m = read_manifest(store)
        if m["cache_id"] != identity["cache_id"]:
            had = (m.get("software") or {}).get("diffusers", "not recorded")
            if had != identity["software"]["diffusers"] and m["sampler"] == identity["sampler"]:
                raise DkdmError(f"{store.url} was generated with diffusers {had}, this is {identity['software']['diffusers']}: "
                                "new shards could differ from the old ones; finish it with the old diffusers or use another --out")
            raise DkdmError(f"{store.url} already holds cache {m['cache_id']} (teacher {m['teacher']['source']}, "
                            f"sampler {m['sampler']['scheduler']}-{m['sampler']['steps']}); these settings make cache "
                            f"{identity['cache_id']}: use another --out")
        if m["layout"] != identity["layout"]:
            raise DkdmError(f"{store.url} was written with layout {m['layout']}, not {identity['layout']} (e.g. --shard-size); keep the original")
        return
    if store.exists() and [n for n in store.ls() if not n.startswith(".")]:
        raise DkdmError(f"{store.url} exists, is not empty and is not a dkdm cache; choose another --out")
    write_manifest(store, {**identity, "shards": [], "totals": {"shards": 0, "records": 0, "bytes": 0, "trajectories": 0}})


def shard_is_complete(store: Store, sidecars: dict, index: int, traj_range: list[int], cid: str) -> bool:
    s = sidecars.get(index)
    return bool(s and s.get("cache_id") == cid and s.get("trajectories") == traj_range and backend.data_present(store, s))


@torch.no_grad()
def generate(cfg: GenerateConfig, rank: int = 0, world: int = 1, progress: bool = True, barrier=None,
             stop_after_shards: int | None = None) -> dict:
    """Fill the shards this rank owns (shard g where g % world == rank); rank 0 seals at the end."""
    validate(cfg)
    check_world(world, "generate")
    device = pick_device(cfg.device)
    if device.type == "cuda" and device.index is None and world > 1:  # one GPU per rank, as accelerate places them
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    teacher = load_teacher(cfg.teacher, device)
    T = int(teacher.scheduler_config.get("num_train_timesteps", 1000))
    walk = coverage.sampler_for(cfg.sampler, T)
    sched, spacing = stable_scheduler(walk, teacher.scheduler_config)
    if spacing != walk.timestep_spacing and rank == 0:
        first = int(make_scheduler(walk, teacher.scheduler_config).timesteps[0])
        print(f"note: {cfg.sampler.scheduler} diverges from t={first} with this teacher's noise schedule; "
              f"sampling with '{spacing}' spacing (recorded in the manifest)", file=sys.stderr)
    timesteps = [int(t) for t in sched.timesteps]
    kept = parse_keep(cfg.keep, len(timesteps))
    shape = teacher.sample_shape
    out_ch = teacher.unet.config.out_channels
    cond = conditioning(teacher, cfg)
    sampler = {"scheduler": walk.scheduler, "steps": walk.steps, "eta": walk.eta,
               "timestep_spacing": spacing, "guidance_scale": cond.guidance_scale if cond else 1.0,
               "timesteps": timesteps, "keep": cfg.keep, "kept_steps": kept, "base_seed": cfg.seed,
               "seed_rule": seeds.TRAJECTORY_RULE, "dtype": cfg.dtype, "coverage": walk.coverage,
               "offsets": coverage.offsets_used(walk.coverage, timesteps, T),
               "offset_rule": "traj mod stride" if walk.coverage == "offsets" else None,
               "covered_timesteps": coverage.covered_timesteps(walk.coverage, timesteps, T, kept),
               "use_clipped_model_output": clipped_eps(sched)}
    if cond:
        sampler["prompts"] = {"count": len(cond.prompts), "unique": len(cond.unique), "rule": "traj % count",
                              "sha256": rec_sha("\n".join(cond.prompts))}
    record = {"x_t": {"shape": list(shape), "dtype": cfg.dtype},
              "target": {"shape": [out_ch, *shape[1:]], "dtype": cfg.dtype},
              "target_kind": ("guided eps" if cond and cond.guidance_scale != 1.0 else "eps")
              + ("+variance" if teacher.learned_variance else ""),
              "x_t_is": "model input (after scale_model_input)"}
    per_step = 1
    if cond is not None and cond.uncond_row is not None:  # latent teachers: see dkdm.latent.PairedGuidance
        record["target_kind"], per_step = PAIRED_TARGETS, 2
    layout = {"backend": "zarr" if cfg.format == "zarr" else "wds", "shard_size": cfg.shard_size, "key": rec.KEY_FORMAT}
    if cfg.format == "wds-gz":
        layout["compression"] = "gzip"
    if cfg.format == "zarr":
        layout.update(records_per_shard=cfg.shard_size * len(kept) * per_step,
                      records_total=cfg.trajectories * len(kept) * per_step)
    identity = make_identity(teacher, sched, sampler=sampler, record=record, layout=layout)
    if cond:
        identity["embeddings"] = cond.describe()
    store = Store(cfg.out)
    # rank 0 creates the cache (manifest, array metadata, embeddings) before the others look at it
    if rank == 0 or barrier is None:
        _prepare(store, identity, cond)
    if barrier is not None:
        barrier()
        if rank != 0:
            _prepare(store, identity, None)
    cid = identity["cache_id"]
    n_shards = math.ceil(cfg.trajectories / cfg.shard_size)
    mine = [g for g in range(n_shards) if g % world == rank]
    sidecars = {s["index"]: s for s in read_sidecars(store, identity)}
    todo = [g for g in mine if not shard_is_complete(store, sidecars, g, _range(g, cfg), cid)]
    skipped = len(mine) - len(todo)
    kept_set = set(kept)
    bar = progress_bar(sum(_range(g, cfg)[1] - _range(g, cfg)[0] for g in todo), f"generate[{rank}]", disable=not progress, unit="traj")
    t0, n_records, write_s = time.time(), 0, 0.0  # write_s: time in the writer (encode, compress, hash, store)
    for done, g in enumerate(todo):
        if stop_after_shards is not None and done >= stop_after_shards:
            break
        a, b = _range(g, cfg)
        writer = backend.open_writer(store, shard_name(g), g, record, layout)
        try:
            for lo in range(a, b, cfg.batch_size):
                trajs = np.arange(lo, min(lo + cfg.batch_size, b), dtype=np.int64)
                batches = _walk(teacher, sched, trajs, cfg, shape, kept_set, device, cond,
                                shift=coverage.shifts(walk.coverage, timesteps, T, trajs))
                tw = time.perf_counter()
                writer.add_many(batches)
                write_s += time.perf_counter() - tw
                bar.update(len(trajs), records_per_s=(n_records + writer.count) / max(1e-9, time.time() - t0))
        except BaseException:
            writer.abort()
            raise
        tw = time.perf_counter()
        info = writer.finish()
        n_records += info["records"]
        # bits are reproducible for the same device, software and CPU thread count: record them
        made_on = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "rank": rank, "world": world}
        sidecar = {**info, "index": g, "name": shard_name(g), "cache_id": cid, "trajectories": [a, b], "made_on": made_on}
        store.write_bytes(f"{SHARD_DIR}/{shard_name(g)}.json", cfgmod_json(sidecar).encode())
        write_s += time.perf_counter() - tw
    bar.close()
    seconds = time.time() - t0
    if barrier is not None:
        barrier()
    manifest = seal(store) if rank == 0 else None
    return {"cache": store.url, "cache_id": cid, "shards_written": len(todo) if stop_after_shards is None else min(len(todo), stop_after_shards),
            "shards_skipped": skipped, "records_written": n_records, "seconds": seconds,
            "write_seconds": write_s,
            "records_per_s": n_records / seconds if seconds > 0 else 0.0,
            "total_records": manifest["totals"]["records"] if manifest else None}


def conditioning(teacher, cfg: GenerateConfig) -> Conditioning | None:
    if teacher.conditional and not cfg.prompts:
        raise DkdmError(f"teacher {cfg.teacher} is text-conditioned: give --prompts FILE (one prompt per line)")
    if not teacher.conditional:
        if cfg.prompts:
            raise DkdmError(f"teacher {cfg.teacher} is unconditional; drop --prompts")
        return None
    # a latent teacher's student is exported as a pipeline that applies guidance itself: cache unguided outputs
    paired = teacher.latent and cfg.guidance_scale != 1.0
    return Conditioning(teacher, read_prompts(cfg.prompts), cfg.guidance_scale, uncond_row=paired)


def _prepare(store: Store, identity: dict, cond: Conditioning | None) -> None:
    prepare_store(store, identity)
    backend.prepare(store, identity["record"], identity["layout"])
    if cond is not None:
        cond.write(store)


def rec_sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def cfgmod_json(obj) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _range(g: int, cfg: GenerateConfig) -> list[int]:
    return [g * cfg.shard_size, min((g + 1) * cfg.shard_size, cfg.trajectories)]


def _walk(teacher, sched, trajs: np.ndarray, cfg: GenerateConfig, shape, kept: set, device,
          cond: Conditioning | None = None, shift: torch.Tensor | None = None) -> list[rec.RecordBatch]:
    """One batch of trajectories through the whole schedule; the kept steps come back as records."""
    out: list[rec.RecordBatch] = []
    n = len(trajs)
    rows = np.array([cond.row_of(int(j)) for j in trajs], np.int64) if cond else np.full(n, -1, np.int64)
    paired = PairedGuidance(cond, teacher, rows, device) if cond and cond.uncond_row is not None else None
    model = paired or (cond.model(teacher, rows, device) if cond else teacher)

    def record(i, t, inp, model_out):
        if not (torch.isfinite(inp).all() and torch.isfinite(model_out).all()):
            raise NonFiniteError(f"the teacher walk produced NaN/Inf at step {i} (t={t}) for trajectories "
                                 f"{int(trajs[0])}..{int(trajs[-1])}; nothing was written for this shard. Check the "
                                 "teacher's weights and the sampler settings (--eta, --guidance-scale, --dtype)")
        if i in kept and paired is not None:
            out.append(paired.records(rec, inp, cfg.dtype, t, i, trajs, rows))
        elif i in kept:
            out.append(rec.RecordBatch(
                x_t=rec.to_storage(inp, cfg.dtype), target=rec.to_storage(model_out, cfg.dtype),
                t=np.broadcast_to(np.asarray(t, np.int64), (n,)).copy(), traj=trajs, step=np.full(n, i, np.int64), cond=rows))

    noise_seeds = [seeds.trajectory(cfg.seed, j) for j in trajs]
    sample(model, sched, noise_seeds, shape, eta=cfg.sampler.eta, device=device, callback=record, shift=shift, guided_ddim=True)
    return out
