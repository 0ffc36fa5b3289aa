"""One way to call and load every student kind: UNets take (x, t[, prompt embeddings]); a DiT also a class label."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch

from ..errors import DkdmError
from ..weights import load_unet, read_config

LOADABLE = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")


def model_call(model, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """The denoiser's output tensor for any student kind."""
    if isinstance(model, diffusers.DiTTransformer2DModel):
        return model(x, timestep=t, class_labels=torch.zeros(x.shape[0], dtype=torch.long, device=x.device)).sample
    if cond is not None:
        return model(x, t, encoder_hidden_states=cond).sample
    return model(x, t).sample


def find_model_dir(path: str | Path) -> Path | None:
    p = Path(path)
    for cand in (p / "unet", p / "transformer", p / "student" / "unet", p / "student" / "transformer", p):
        if (cand / "config.json").is_file():
            return cand
    return None


def load_model(folder: str | Path):
    """A student folder's denoiser, with the diffusers class its config names."""
    cfg = read_config(Path(folder))
    name = cfg.get("_class_name", "UNet2DModel")
    if name not in LOADABLE:
        raise DkdmError(f"{folder}: a {name} is not a student dkdm can load ({', '.join(LOADABLE)})")
    return load_unet(getattr(diffusers, name), folder)
