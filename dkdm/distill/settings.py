"""What a distillation run may be asked to do: the settings checks, the row split of a batch, the resume keys,
and the signal flag that turns Ctrl-C/SIGTERM into a checkpoint."""

from __future__ import annotations

import math
import signal
import threading

from ..config import DistillConfig
from ..errors import DkdmError, Interrupted
from ..runtime import positive
from . import fewstep

SOURCES = ("cache", "live", "both")
PRECISIONS = ("no", "fp16", "bf16")
# settings a resumed run must share with the checkpoint, or the data stream would not line up; num_workers too:
# each loader worker reads its own shard slice with its own generator
RESUME_KEYS = ("source", "sampler", "pool", "rho", "batch_size", "grad_accum", "real_ratio", "seed", "shuffle_buffer", "cache", "real",
               "num_workers",
               "objective", "jump", "fewstep_steps", "pair_starts")


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
