"""Sampling schedulers by short name, built from the teacher's own scheduler config."""

from __future__ import annotations

import dataclasses
import inspect

import diffusers
import torch

from .config import SamplerConfig
from .errors import DkdmError

KINDS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "lcm": "LCMScheduler",  # consistency students (Luo et al. 2023): x0 via c_skip/c_out, re-noised between steps
}
SINGLE_STEP = {"ddpm", "ddim"}  # schedulers whose step needs no history: usable in a mixed-timestep pool
NOISY_STEP = {"ddpm", "lcm"}  # of KINDS, the ones whose step draws fresh noise at any eta (DDIM: only when eta > 0; LCM re-noises)


def deterministic_step(sched) -> bool:
    """False when the scheduler's step draws noise whatever eta is: it then needs a generator."""
    return type(sched).__name__ not in {KINDS[k] for k in NOISY_STEP}


def make_scheduler(cfg: SamplerConfig, base_config: dict):
    if cfg.scheduler not in KINDS:
        raise DkdmError(f"unknown scheduler {cfg.scheduler!r}; choose one of {sorted(KINDS)}")
    if cfg.steps <= 0:
        raise DkdmError(f"sampler steps must be a positive number, got {cfg.steps}")
    cls = getattr(diffusers, KINDS[cfg.scheduler])
    extra = {"timestep_spacing": cfg.timestep_spacing}
    if cfg.scheduler == "dpm++":
        extra["algorithm_type"] = "dpmsolver++"
    # keys another class would warn about (a DDPM config's variance_type for LCM, LCM's steps for DDIM) are dropped
    accepted = inspect.signature(cls.__init__).parameters
    base = {k: v for k, v in base_config.items() if not k.startswith("_") and k in accepted}
    if cfg.scheduler == "lcm":
        # LCM picks its steps from an `original_inference_steps` grid (the walk a consistency student learned):
        # a student's own LCM config carries it; from another kind's config, any step count up to 50 fits
        own = kind_of_config(base_config) == "lcm"
        orig = int(base.get("original_inference_steps") or 50) if own else max(50, cfg.steps)
        if cfg.steps > orig:
            raise DkdmError(f"this LCM scheduler was made for a {orig}-step walk: it samples at most {orig} steps, "
                            f"got {cfg.steps}")
        extra["original_inference_steps"] = orig
    sched = cls.from_config({**base, **extra})
    sched.set_timesteps(cfg.steps)
    return sched


def kind_of(sched) -> str:
    """The short name of a scheduler object ("ddim", "lcm", ...); its class name when it has none."""
    name = type(sched).__name__
    return next((k for k, v in KINDS.items() if v == name), name)


def kind_of_config(config: dict) -> str | None:
    """The short name of a saved scheduler config (its `_class_name`), or None for a class we do not sample with."""
    return next((k for k, v in KINDS.items() if v == config.get("_class_name")), None)


def stable_scheduler(cfg: SamplerConfig, base_config: dict):
    """make_scheduler, but DPM-Solver++ and Euler start from 'leading' spacing when the first timestep has
    alpha_bar < 1e-6 (squaredcos_cap_v2 at t=999: 2.4e-9, sigma ~ 2e4, every sample diverges; linear: 4e-5,
    fine). Returns (sched, spacing used): callers record the spacing they actually sampled with."""
    sched = make_scheduler(cfg, base_config)
    if cfg.scheduler in ("dpm++", "euler") and float(sched.alphas_cumprod[int(sched.timesteps[0])]) < 1e-6:
        cfg = dataclasses.replace(cfg, timestep_spacing="leading")
        sched = make_scheduler(cfg, base_config)
    return sched, cfg.timestep_spacing


def step(sched, model_output: torch.Tensor, t, x: torch.Tensor, eta: float = 0.0, generator=None,
         guided_ddim: bool = False) -> torch.Tensor:
    """One reverse step; drops learned-variance channels for schedulers that cannot use them.
    guided_ddim: teacher trajectories (generate, pool) step DDIM like guided-diffusion (see clipped_eps)."""
    c = x.shape[1]
    # only DDPM's step reads variance channels; a DDIM built from a DDPM config keeps variance_type but ignores it
    uses_variance = type(sched).__name__ == "DDPMScheduler" and getattr(sched.config, "variance_type", None) in ("learned", "learned_range")
    if model_output.shape[1] == 2 * c and not uses_variance:
        model_output = model_output[:, :c]
    kwargs = {"generator": generator}
    if "eta" in inspect.signature(sched.step).parameters:
        kwargs["eta"] = eta
    if guided_ddim and clipped_eps(sched):
        kwargs["use_clipped_model_output"] = True
    return sched.step(model_output, t, x, **kwargs).prev_sample


def clipped_eps(sched) -> bool:
    """DDIM with x0 clipping steps with the eps re-derived from the clipped x0, as guided-diffusion's
    `ddim_sample` does (diffusers' default keeps the raw eps, a different trajectory)."""
    c = sched.config
    return type(sched).__name__ == "DDIMScheduler" and bool(c.get("clip_sample") or c.get("thresholding"))


def step_mixed(sched, model_output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, eta: float = 0.0, generators=None,
               guided_ddim: bool = False) -> torch.Tensor:
    """A reverse step for a batch whose members sit at different timesteps (the DKDM pool)."""
    out = torch.empty_like(x)
    for tv in torch.unique(t).tolist():
        sel = (t == tv).nonzero(as_tuple=True)[0]
        # a list holds one generator per member; one torch.Generator is a stream shared by the batch
        gens = generators if isinstance(generators, torch.Generator) or generators is None else [generators[i] for i in sel.tolist()]
        out[sel] = step(sched, model_output[sel], int(tv), x[sel], eta=eta, generator=gens, guided_ddim=guided_ddim)
    return out
