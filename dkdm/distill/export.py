"""Save a student so plain diffusers loads it: unet/, scheduler/ and model_index.json."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers

from ..runtime import atomic_write_json, chmod_tree

PIPELINE_FOR = {"DDIMScheduler": "DDIMPipeline", "DDPMScheduler": "DDPMPipeline"}


def export_student(unet, sched, out: str | Path, card: dict) -> Path:
    out = Path(out)
    # a DiT student goes to transformer/ (diffusers' name for it); UNets to unet/
    unet.save_pretrained(out / ("transformer" if type(unet).__name__ == "DiTTransformer2DModel" else "unet"),
                         safe_serialization=True)
    sched.save_pretrained(out / "scheduler")
    cls = type(sched).__name__
    if type(unet).__name__ == "UNet2DModel":
        atomic_write_json(out / "model_index.json", {
            "_class_name": PIPELINE_FOR.get(cls, "DDIMPipeline"),
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DModel"],
            "scheduler": ["diffusers", cls],
        })
    # a text-conditioned student has no pixel-space pipeline class in diffusers: load unet/ and scheduler/
    # and condition it with the teacher's text encoder (named in dkdm_student.json)
    atomic_write_json(out / "dkdm_student.json", card)
    chmod_tree(out)  # safetensors files come out 0600; a student is shared like any output
    return out


def read_card(folder: str | Path) -> dict:
    f = Path(folder) / "dkdm_student.json"
    return json.loads(f.read_text()) if f.is_file() else {}
