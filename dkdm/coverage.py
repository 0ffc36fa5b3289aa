"""Timestep coverage: which training timesteps the teacher's trajectories (cache or live pool) visit.

- grid:    every trajectory walks the sampler's grid (DDIM-25 sees 25 of 1000 timesteps);
- offsets: trajectory j walks the grid shifted by offset(j) = j mod stride, stride = T / steps, so the
           union of trajectories covers every training timestep while each still costs `steps` teacher
           forwards (DDIM steps t -> t - stride for any t, so a shifted grid is a valid walk);
- full:    the whole DDPM chain (T steps per trajectory), as the official DKDM pool does.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import SamplerConfig
from .errors import DkdmError

COVERAGES = ("offsets", "grid", "full")


def check(coverage: str) -> None:
    if coverage not in COVERAGES:
        raise DkdmError(f"unknown coverage {coverage!r}; choose one of {', '.join(COVERAGES)}")


def sampler_for(cfg: SamplerConfig, num_train_timesteps: int) -> SamplerConfig:
    """The sampler a coverage walks: 'full' is DDPM over all T timesteps, the others keep `cfg`."""
    check(cfg.coverage)
    if cfg.coverage == "full":
        return dataclasses.replace(cfg, scheduler="ddpm", steps=num_train_timesteps, timestep_spacing="leading")
    if cfg.coverage == "offsets" and cfg.scheduler != "ddim":
        # DDIM steps t -> t - T/steps for any t; diffusers' DDPM looks t up on its grid, multistep solvers keep history
        raise DkdmError(f"coverage 'offsets' shifts DDIM's grid, not {cfg.scheduler!r}'s; "
                        "use --coverage grid (this sampler's timesteps only) or full (DDPM over all T)")
    return cfg


def stride_and_sign(timesteps, num_train_timesteps: int) -> tuple[int, int]:
    """(stride, +1 or -1): the grid's widest gap, so shifts 0..stride-1 reach every t between grid points,
    and the direction that keeps every shifted t in [0, T). A grid too coarse for either direction (e.g.
    3 trailing steps) shifts down by at most min(t): a few timesteps stay uncovered (covered_timesteps says which)."""
    ts = [int(t) for t in timesteps]
    stride = max([a - b for a, b in zip(ts, ts[1:])] or [1])
    if min(ts) - (stride - 1) >= 0:
        return stride, -1
    if max(ts) + stride - 1 <= num_train_timesteps - 1:
        return stride, 1
    return min(ts) + 1, -1


def shifts(coverage: str, timesteps, num_train_timesteps: int, trajs) -> torch.Tensor:
    """Per-trajectory shift added to every grid timestep (0 for grid/full)."""
    trajs = torch.as_tensor([int(j) for j in trajs], dtype=torch.long)
    if coverage != "offsets":
        return torch.zeros_like(trajs)
    stride, sign = stride_and_sign(timesteps, num_train_timesteps)
    return sign * (trajs % stride)


def offsets_used(coverage: str, timesteps, num_train_timesteps: int) -> list[int]:
    if coverage != "offsets":
        return [0]
    stride, sign = stride_and_sign(timesteps, num_train_timesteps)
    return [sign * o for o in range(stride)]


def covered_timesteps(coverage: str, timesteps, num_train_timesteps: int, kept: list[int] | None = None) -> list[int]:
    """Sorted timesteps records may carry (kept = the step indices kept along a trajectory)."""
    ts = [int(t) for t in timesteps]
    if kept is not None:
        ts = [ts[i] for i in kept]
    return sorted({t + s for t in ts for s in offsets_used(coverage, timesteps, num_train_timesteps)})
