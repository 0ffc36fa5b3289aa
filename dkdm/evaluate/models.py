"""Load the models under evaluation: the teacher, and students saved by `dkdm distill` (or any UNet folder)."""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel

from ..errors import DkdmError
from ..weights import check_finite, load_unet


def load_student_unet(path: str, device="cpu") -> UNet2DModel:
    """A student folder (with unet/), a run folder (with student/unet/), or a bare UNet folder."""
    p = Path(path)
    for cand in (p / "unet", p / "student" / "unet", p):
        if (cand / "config.json").is_file():
            unet = load_unet(UNet2DModel, cand)
            check_finite(unet, f"student {cand}")
            return unet.to(device).eval().requires_grad_(False)
    raise DkdmError(f"student {path!r} not found: expected a folder with unet/config.json (as written by `dkdm distill`)")


def student_name(path: str) -> str:
    p = Path(path).resolve()
    return p.parent.name if p.name in ("student", "unet") else p.name
