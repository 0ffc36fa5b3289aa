"""Load a diffusers teacher (builtin, local folder or hub id), fingerprint it, and query it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import UNet2DModel

from .errors import DkdmError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTINS = {"digits": BUILTIN_DIR / "digits-teacher"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Teacher:
    unet: UNet2DModel
    scheduler_config: dict  # the training scheduler's config: the noise schedule the teacher knows
    source: str
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (self.unet.config.in_channels, h, w)

    @property
    def learned_variance(self) -> bool:
        return self.unet.config.out_channels == 2 * self.unet.config.in_channels

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """Teacher output at (x, t): eps, or eps and variance channels."""
        dtype = next(self.unet.parameters()).dtype
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        return self.unet(x.to(dtype), t).sample.float()

    def describe(self) -> dict:
        return {
            "source": self.source,
            "class": type(self.unet).__name__,
            "config": {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")},
            "fingerprint": self.fingerprint,
        }


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: identical weights, identical id."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _scheduler_config_from(folder_or_id: str, subfolder: str | None) -> dict:
    cls = diffusers.DDPMScheduler
    sched = cls.from_pretrained(folder_or_id, subfolder=subfolder)
    return dict(sched.config)


def _load_from(where: str) -> tuple[UNet2DModel, dict]:
    """Pipeline layout (unet/, scheduler/) first, then a flat model repo (config.json at the root)."""
    path = Path(where)
    if path.is_dir():
        if (path / "unet").is_dir():
            return UNet2DModel.from_pretrained(where, subfolder="unet"), _read_scheduler(path / "scheduler")
        if (path / "config.json").is_file():
            return UNet2DModel.from_pretrained(where), _read_scheduler(path)
        raise DkdmError(f"teacher folder {where} has neither unet/ (pipeline layout) nor config.json (model layout)")
    try:  # hub id: same two layouts
        try:
            unet = UNet2DModel.from_pretrained(where, subfolder="unet")
            return unet, _scheduler_config_from(where, "scheduler")
        except OSError:
            return UNet2DModel.from_pretrained(where), _scheduler_config_from(where, None)
    except Exception as exc:  # offline, missing repo, private repo...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DkdmError(f"could not load teacher {where!r} from the hub: {first}") from exc


def _read_scheduler(folder: Path) -> dict:
    for name in ("scheduler_config.json", "config.json"):
        f = folder / name
        if f.is_file():
            cfg = json.loads(f.read_text())
            if "num_train_timesteps" in cfg:
                return cfg
    # No scheduler saved next to the model: assume the DDPM default the model was most likely trained with.
    return dict(diffusers.DDPMScheduler().config)


def resolve_source(source: str) -> str:
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTINS:
            raise DkdmError(f"unknown builtin teacher {source!r}; available: {', '.join('builtin:' + k for k in BUILTINS)}")
        return str(BUILTINS[name])
    p = Path(source).expanduser()
    if p.exists():
        return str(p)
    if source.startswith(("/", ".", "~")) or not HUB_ID.match(source):
        raise DkdmError(f"teacher path {source!r} does not exist (give a local folder, a hub id org/name, or builtin:digits)")
    return source


def load_teacher(source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Teacher:
    unet, sched_cfg = _load_from(resolve_source(source))
    fp = fingerprint(unet)
    unet = unet.to(device)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    unet = unet.eval().requires_grad_(False)
    return Teacher(unet=unet, scheduler_config=sched_cfg, source=source, fingerprint=fp)
