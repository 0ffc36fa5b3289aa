"""Save a student so plain diffusers loads it: unet/, scheduler/ and model_index.json, plus the steps it was made for."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers

from ..errors import DkdmError
from ..runtime import atomic_write_bytes, atomic_write_json, chmod_tree
from ..schedulers import kind_of

# DDPMPipeline calls scheduler.step(out, t, x, generator=...): any scheduler whose step takes no eta (LCM) runs in it;
# DDIMPipeline passes eta=, which LCMScheduler refuses (STACK-NOTES, checked 2026-12-03)
PIPELINE_FOR = {"DDIMScheduler": "DDIMPipeline", "DDPMScheduler": "DDPMPipeline", "LCMScheduler": "DDPMPipeline"}


DEFAULT_STEPS = 25  # an eps student that learned every timestep (offsets/full coverage) samples like the teacher


def sampling_card(sched, card: dict) -> dict:
    """card["sampling"]: the scheduler kind and default steps the student is sampled with (evaluate and serve read
    it). A few-step objective sets it (a consistency student: lcm at 1/2/4/8). An eps student gets its export
    scheduler and the walk's steps when it learned only that grid, else DEFAULT_STEPS."""
    given = dict(card.get("sampling") or {})
    grid_only = (card.get("sampler") or {}).get("coverage", "grid") == "grid"
    steps = int(given.get("steps") or (sched.num_inference_steps if grid_only else DEFAULT_STEPS))
    out = {"scheduler": given.get("scheduler") or kind_of(sched), "steps": steps,
           "steps_supported": sorted({int(s) for s in given.get("steps_supported") or [steps]} | {steps}),
           "objective": given.get("objective", "eps")}
    if given.get("guidance_scale") is not None:  # text-to-image: 1 when the cache's guidance is baked in
        out["guidance_scale"] = float(given["guidance_scale"])
    if out["scheduler"] != kind_of(sched):
        raise DkdmError(f"the student's card says it samples with {out['scheduler']!r}, but its exported scheduler is "
                        f"{type(sched).__name__}")
    if any(s < 1 for s in out["steps_supported"]):
        raise DkdmError(f"sampling steps must be positive, got {out['steps_supported']}")
    return {**card, "sampling": {**given, **out}}  # an objective's extra keys (prediction type, walk) are kept


def export_student(unet, sched, out: str | Path, card: dict) -> Path:
    out = Path(out)
    card = sampling_card(sched, card)
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
    atomic_write_bytes(out / "README.md", usage(card).encode())
    chmod_tree(out)  # safetensors files come out 0600; a student is shared like any output
    return out


def usage(card: dict) -> str:
    """The folder's README: how plain diffusers runs it at the steps it was made for (the pipeline's own default
    is 1,000 steps, which an LCM scheduler made for a short walk refuses)."""
    s = card["sampling"]
    return (f"# dkdm student\n\nDistilled from `{(card.get('teacher') or {}).get('source', '?')}` with objective "
            f"`{s['objective']}`. Sample it with its own scheduler (`{s['scheduler']}`) at "
            f"{s['steps']} steps (made for {', '.join(map(str, s['steps_supported']))}):\n\n```python\n"
            "from diffusers import DiffusionPipeline\n"
            "pipe = DiffusionPipeline.from_pretrained(\"path/to/this/folder\")\n"
            f"images = pipe(num_inference_steps={s['steps']}).images\n```\n\n"
            "A text-to-image student also takes a prompt and `guidance_scale` "
            f"({s.get('guidance_scale', 'as the teacher')}; 1 when the teacher's guidance is baked in). "
            "`dkdm_student.json` records the teacher, the cache and the training run.\n")


def read_card(folder: str | Path) -> dict:
    f = Path(folder) / "dkdm_student.json"
    return json.loads(f.read_text()) if f.is_file() else {}
