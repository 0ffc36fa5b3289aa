"""Load the models under evaluation: the teacher, and students saved by `dkdm distill` (or any UNet folder)."""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel

from ..errors import DkdmError
from ..students.call import find_model_dir, load_model
from ..weights import check_finite


def load_student_unet(path: str, device="cpu") -> UNet2DModel:
    """A student folder (with unet/ or transformer/), a run folder (with student/...), or a bare model folder."""
    folder = find_model_dir(path)
    if folder is not None:
        model = load_model(folder)
        check_finite(model, f"student {folder}")
        return model.to(device).eval().requires_grad_(False)
    raise DkdmError(f"student {path!r} not found: expected a folder with unet/config.json (as written by `dkdm distill`)")


def student_name(path: str) -> str:
    p = Path(path).resolve()
    return p.parent.name if p.name in ("student", "unet") else p.name
