"""Reverse-process sampling with per-sample seeds, so results do not depend on batching."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import schedulers
from .students.call import model_call  # any student kind: UNet, conditional UNet, DiT

# callback(step_index, timestep, model_input, model_output) — the hook a trajectory recorder needs
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


# torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so base seeds cannot be a high
# word: seed*2**32 + traj would give every base seed the same trajectories. Spread bases by a
# golden-ratio multiplier instead; base 0 keeps seed == trajectory id.
SEED_MULTIPLIER = 0x9E3779B1
SEED_RULE = "(traj + base_seed * 0x9E3779B1) mod 2**32"


def trajectory_seed(base_seed: int, traj: int) -> int:
    return (int(traj) + int(base_seed) * SEED_MULTIPLIER) % 2**32


def generators_for(seeds, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample: a seed names an image regardless of which batch it lands in."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def initial_noise(seeds, shape: tuple[int, int, int], device="cpu") -> tuple[torch.Tensor, list[torch.Generator]]:
    gens = generators_for(seeds, "cpu")
    noise = randn_tensor((len(gens), *shape), generator=gens, device=torch.device("cpu"), dtype=torch.float32)
    return noise.to(device), gens


@torch.no_grad()
def sample(model: Callable, sched, seeds, shape, eta: float = 0.0, device="cpu", callback: StepCallback | None = None,
           shift: torch.Tensor | None = None, guided_ddim: bool = False, clamp: bool = True) -> torch.Tensor:
    """Walk `sched.timesteps` from seeded noise; returns images in [-1, 1] (float32, on `device`); latents unclamped.

    `shift` (one int per sample) walks sample i along the grid moved by shift[i] (timestep coverage
    'offsets'); the callback then gets the (n,) tensor of timesteps instead of one int."""
    x, gens = initial_noise(seeds, shape, device)
    sched.set_timesteps(sched.num_inference_steps)  # multistep/Euler schedulers keep state: restart it
    x = x * sched.init_noise_sigma
    shifted = shift is not None and bool((shift != 0).any())
    for i, t in enumerate(sched.timesteps):
        noise = gens if eta > 0 or _needs_noise(sched) else None
        if shifted:  # single-step schedulers only (coverage.sampler_for): no scale_model_input, per-sample t
            tv = int(t) + shift.to(torch.long)
            out = model(x, tv.to(device))
            if callback is not None:
                callback(i, tv, x, out)
            x = schedulers.step_mixed(sched, out, tv, x, eta=eta, generators=noise, guided_ddim=guided_ddim)
            continue
        inp = sched.scale_model_input(x, t)
        out = model(inp, t.to(device) if torch.is_tensor(t) else t)
        if callback is not None:
            callback(i, int(t), inp, out)
        x = schedulers.step(sched, out, t, x, eta=eta, generator=noise, guided_ddim=guided_ddim)
    return x.clamp(-1, 1) if clamp else x


def _needs_noise(sched) -> bool:
    """Schedulers that draw noise inside step: they get the per-sample generators (LCM re-noises between steps)."""
    return type(sched).__name__ in ("DDPMScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler")


def unet_fn(unet, cond: torch.Tensor | None = None) -> Callable:
    """Adapt a UNet2DModel (or a UNet2DConditionModel with fixed prompt embeddings `cond`) to model(x, t) -> output."""

    def f(x, t):
        dtype = next(unet.parameters()).dtype
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        return model_call(unet, x.to(dtype), t, None if cond is None else cond.to(x.device, dtype)).float()

    return f


@torch.no_grad()
def sample_many(model: Callable, sched, seeds, shape, batch_size: int, eta=0.0, device="cpu", progress=None) -> torch.Tensor:
    """Sample in batches; returns CPU images in [-1, 1]."""
    seeds = list(seeds)
    outs = []
    for i in range(0, len(seeds), batch_size):
        outs.append(sample(model, sched, seeds[i:i + batch_size], shape, eta=eta, device=device).cpu())
        if progress is not None:
            progress(len(seeds[i:i + batch_size]))
    return torch.cat(outs) if outs else torch.empty(0, *shape)
