"""Load every student kind from its folder (calling them: dkdm/modelcall.py)."""

from __future__ import annotations

from pathlib import Path

import diffusers

from ..errors import DkdmError
from ..modelcall import model_call  # noqa: F401  (re-exported: the one call adapter, dkdm/modelcall.py)
from ..weights import load_unet, read_config

LOADABLE = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")


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
