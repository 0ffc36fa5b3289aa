"""What a person watches during distillation: CSV log, TensorBoard via accelerate, sample grid PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from .. import config as cfgmod
from ..errors import DkdmError
from ..extras import install_hint
from ..imaging import grid, save_png
from ..sampling import sample, unet_fn

# few-step objectives log their own parts (units: dkdm/distill/objectives, docs/fewstep.md)
FIELDS = ("step", "loss", "eps_mse", "kl", "feature_kd", "lr", "records_per_s", "x0_mse", "xj_mse", "cd_mse", "endpoint_mse")
GRID_SEEDS = range(64)  # fixed seeds: grids from different steps show the same noise


class CsvLog:
    """Appends one row per log step; a resumed run drops rows from steps it will redo."""

    def __init__(self, path: Path, keep_before: int = 0):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_before and path.is_file():
            with open(path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["step"]) < keep_before]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(kept)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def use_tensorboard(cfg) -> bool:
    """'auto' logs to TensorBoard when it is installed; asking for it without the package is an error."""
    import importlib.util

    installed = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    if cfg.tracker == "tensorboard" and not installed:
        raise DkdmError(install_hint("tensorboard", "--tracker tensorboard"))
    if cfg.tracker not in ("auto", "tensorboard", "none"):
        raise DkdmError(f"unknown --tracker {cfg.tracker!r}; choose auto, tensorboard or none")
    return cfg.tracker == "tensorboard" or (cfg.tracker == "auto" and installed)


def start_trackers(acc, cfg) -> None:
    if not use_tensorboard(cfg):
        return
    flat = {}
    for k, v in cfgmod.to_dict(cfg).items():  # TensorBoard hparams take scalars only
        if isinstance(v, (int, float, str, bool)):
            flat[k] = v
    acc.init_trackers("tensorboard", config=flat)


@torch.no_grad()
def save_sample_grid(unet, ema, sched, spec, path: Path, device, cond: torch.Tensor | None = None) -> None:
    """64 samples from fixed seeds with the EMA weights (when given), as an 8x8 PNG grid; a conditional
    student gets `cond` (prompt embeddings, cycled so each column of the grid shares a prompt)."""
    params = list(unet.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    was_training = unet.training
    unet.eval()
    try:
        c = cond[torch.arange(len(GRID_SEEDS)) % min(8, len(cond))] if cond is not None else None
        imgs = sample(unet_fn(unet, c), sched, GRID_SEEDS, (spec.in_channels, spec.sample_size, spec.sample_size), device=device)
    finally:
        unet.train(was_training)
        if ema is not None:
            ema.restore(params)
    save_png(grid(imgs, ncol=8, scale=4), path)
