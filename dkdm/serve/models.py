"""The models a server holds, and one batched generation call over the sampler `dkdm evaluate` uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DkdmError
from ..evaluate.sweep import scheduler_for
from ..own_sampler import own_sampling
from ..sampling import sample, unet_fn
from ..schedulers import KINDS
from ..teacher import Teacher, load_teacher, resolve_source

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Served:
    name: str
    source: str
    teacher: Teacher  # the loaded pipeline parts: unet, scheduler config, text encoder + tokenizer when conditional
    vae: torch.nn.Module | None = None  # latent pipelines: images are the VAE's decode of the sampled latents
    sched_cache: dict = field(default_factory=dict)
    # a request without scheduler/steps gets the model's own: a student's card (few-step: lcm at 2...), else DDIM-25
    sampling: dict = field(default_factory=lambda: {"scheduler": "ddim", "steps": 25, "steps_supported": None,
                                                    "objective": None, "guidance_scale": None})

    def scheduler(self, kind: str, steps: int, spacing: str = "trailing"):
        """The scheduler for one setting, built once (~1 ms) and reused: a server sees the same few settings."""
        key = (kind, steps, spacing)
        if key not in self.sched_cache:
            self.sched_cache[key] = scheduler_for(kind, steps, spacing, self.teacher.scheduler_config)[0]
        return self.sched_cache[key]

    @property
    def conditional(self) -> bool:
        return self.teacher.conditional

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.teacher.sample_shape
        if self.vae is None:
            return (c, h, w)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.out_channels, h * f, w * f)

    def describe(self) -> dict:
        u = self.teacher.unet
        return {"name": self.name, "source": self.source, "class": type(u).__name__, "conditional": self.conditional,
                "latent": self.vae is not None, "image_shape": list(self.image_shape),
                "params": sum(p.numel() for p in u.parameters()), "dtype": str(next(u.parameters()).dtype).split(".")[-1],
                "device": str(self.teacher.device), "schedulers": sorted(KINDS),
                "default": {"scheduler": self.sampling["scheduler"], "steps": self.sampling["steps"],
                            "guidance": self.sampling["guidance_scale"]},
                "steps_supported": self.sampling["steps_supported"], "objective": self.sampling["objective"]}


def _folder(source: str) -> str:
    """A `dkdm distill` run folder holds its student in student/."""
    p = Path(source)
    return str(p / "student") if (p / "student" / "unet").is_dir() and not (p / "unet").is_dir() else source


def _default_name(source: str) -> str:
    if source.startswith("builtin:"):
        return source
    p = Path(source).resolve()
    return p.parent.name if p.name in ("student", "unet") else p.name


def load_served(spec: str, device: torch.device, dtype: str = "fp32", compile: bool = False) -> Served:
    """`[NAME=]SOURCE`: builtin:*, a teacher/pipeline folder, a student or run folder from `dkdm distill`."""
    name, _, source = spec.rpartition("=") if "=" in spec and not spec.startswith("builtin:") else ("", "", spec)
    if dtype not in DTYPES:
        raise DkdmError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        t = load_teacher(_folder(source), device, DTYPES[dtype])
    except DkdmError:
        raise  # already one line that says what to do
    except Exception as exc:  # a broken folder: unreadable config, truncated weights...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DkdmError(f"could not load model {source!r}: {first}") from exc
    folder = Path(resolve_source(_folder(source)))
    if type(t.unet).__name__ == "UNet2DConditionModel" and t.text_encoder is None:
        raise DkdmError(f"model {source!r} is text-conditioned but has no text encoder")
    vae = None
    if (folder / "vae" / "config.json").is_file():
        from ..teacher import load_vae

        vae = load_vae(folder).to(device, DTYPES[dtype]).eval().requires_grad_(False)
    if compile:
        t.unet = torch.compile(t.unet)
    m = Served(name=name or _default_name(source), source=source, teacher=t, vae=vae)
    own = own_sampling(folder)
    if own is not None:
        m.sampling = own
    return m


def _model_fn(m: Served, prompts: list[str] | None, guidance: float, device):
    """model(x, t) for `sample`; text-conditioned models get classifier-free guidance (Ho & Salimans 2022, eq. 6)."""
    if not m.conditional:
        return unet_fn(m.teacher.unet)
    cond, _ = m.teacher.encode_prompts(prompts)
    cond = cond.to(device)
    if guidance == 1.0:
        return unet_fn(m.teacher.unet, cond)
    unc = m.teacher.encode_prompts([""])[0].to(device).expand_as(cond)
    both = unet_fn(m.teacher.unet, torch.cat([unc, cond]))

    def f(x, t):
        out_u, out_c = both(torch.cat([x, x]), t).chunk(2)
        return out_u + guidance * (out_c - out_u)

    return f


@torch.inference_mode()
def generate(m: Served, seeds: list[int], steps: int, scheduler: str, eta: float = 0.0, guidance: float = 1.0,
             prompts: list[str] | None = None, spacing: str = "trailing") -> torch.Tensor:
    """Images in [-1, 1], (N, C, H, W) on the CPU: `dkdm evaluate`'s sampler, one generator per seed."""
    device = m.teacher.device
    sched = m.scheduler(scheduler, steps, spacing)
    x = sample(_model_fn(m, prompts, guidance, device), sched, seeds, m.teacher.sample_shape, eta=eta, device=device,
               clamp=m.vae is None)
    if m.vae is not None:
        sf = getattr(m.vae.config, "scaling_factor", 1.0)
        x = m.vae.decode((x / sf).to(next(m.vae.parameters()).dtype)).sample.float().clamp(-1, 1)
    return x.cpu()
