"""Loading diffusers UNet folders from untrusted places: config bounded and typed first, safetensors only
(a pickled .bin is refused, never unpickled), loader errors as one line, NaN/Inf weights refused."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import DkdmError, NonFiniteError

MAX_CONFIG_BYTES = 1 << 20
WEIGHTS = "diffusion_pytorch_model.safetensors"


def read_config(folder: Path) -> dict:
    f = Path(folder) / "config.json"
    if f.stat().st_size > MAX_CONFIG_BYTES:
        raise DkdmError(f"{f} is {f.stat().st_size:,} bytes; a model config is a few KB")
    try:
        cfg = json.loads(f.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DkdmError(f"{f} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise DkdmError(f"{f} is not a JSON object")
    return cfg


def load_unet(cls, folder: str | Path, subfolder: str | None = None):
    """cls.from_pretrained(folder[, subfolder]) for local folders, refusing pickles and reporting damage in one line."""
    where = Path(folder) / subfolder if subfolder else Path(folder)
    if not (where / WEIGHTS).is_file():
        if any(where.glob("*.bin")) or any(where.glob("*.pt*")):
            raise DkdmError(f"{where} holds only pickled weights (.bin/.pt); dkdm loads safetensors only, never pickles: "
                            "convert them with a trusted tool (save_pretrained(..., safe_serialization=True))")
        raise DkdmError(f"{where} has no {WEIGHTS}")
    read_config(where)
    try:
        model = cls.from_pretrained(str(folder), subfolder=subfolder, use_safetensors=True)
    except Exception as exc:  # safetensors/diffusers raise many types for truncated or mismatched files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DkdmError(f"cannot load the model in {where} ({type(exc).__name__}: {first})") from exc
    return model


def check_finite(model: torch.nn.Module, where: str) -> None:
    """A model with NaN/Inf weights samples garbage: refuse it up front."""
    bad = [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"{where} has NaN/Inf weights in {len(bad)} tensors (e.g. {bad[0]}): it came from a "
                             "diverged run; use an earlier checkpoint")
