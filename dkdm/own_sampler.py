"""A student's own scheduler and steps, read back from its exported folder: what evaluate and serve sample it with."""

from __future__ import annotations

import json
from pathlib import Path

from .cache.limits import check
from .config import SamplerConfig
from .errors import DkdmError
from .schedulers import KINDS, kind_of_config, make_scheduler

MAX_STEPS = 1000  # a card is untrusted input: refuse absurd step lists before sampling with them


def student_folder(path: str | Path) -> Path:
    """The exported folder (with dkdm_student.json) of a run folder, a student folder or its unet/."""
    p = Path(path)
    for cand in (p, p / "student", p.parent):
        if (cand / "dkdm_student.json").is_file() or (cand / "scheduler" / "scheduler_config.json").is_file():
            return cand
    return p


def own_sampling(path: str | Path) -> dict | None:
    """The card's `sampling` ({scheduler, steps, steps_supported, objective}), validated; None for a student
    exported before cards carried it (or any plain model folder): then callers use their own default."""
    folder = student_folder(path)
    f = folder / "dkdm_student.json"
    if not f.is_file():
        return None
    try:
        card = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DkdmError(f"{f} is not valid JSON ({exc}): re-export the student") from None
    s = card.get("sampling") if isinstance(card, dict) else None
    if s is None:
        return None
    ok = (isinstance(s, dict) and s.get("scheduler") in KINDS and _steps_ok(s.get("steps"))
          and isinstance(s.get("steps_supported"), list) and 0 < len(s["steps_supported"]) <= 64
          and all(_steps_ok(v) for v in s["steps_supported"]))
    if not ok:
        raise DkdmError(f"{f}: 'sampling' must name a scheduler ({', '.join(sorted(KINDS))}), steps and steps_supported "
                        f"(integers in 1..{MAX_STEPS}); got {json.dumps(s)[:200]}")
    return {"scheduler": s["scheduler"], "steps": s["steps"], "steps_supported": sorted(set(s["steps_supported"])),
            "objective": str(s.get("objective", "eps")), "guidance_scale": s.get("guidance_scale")}


def _steps_ok(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_STEPS


def own_scheduler(path: str | Path, steps: int, kind: str | None = None, spacing: str = "trailing"):
    """The student's exported scheduler (its config: LCM's original steps, spacing...) set to `steps`."""
    folder = student_folder(path)
    f = folder / "scheduler" / "scheduler_config.json"
    try:
        base = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DkdmError(f"student {folder}: cannot read scheduler/scheduler_config.json ({exc})") from None
    T = base.get("num_train_timesteps") if isinstance(base, dict) else None
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise DkdmError(f"{f}: num_train_timesteps must be a positive integer, got {T!r}")
    check("steps", T, f"{f}: num_train_timesteps")  # an untrusted config: bound what the scheduler allocates
    if not isinstance(base.get("original_inference_steps", 1), int):
        raise DkdmError(f"{f}: original_inference_steps must be an integer")
    check("steps", base.get("original_inference_steps", 1), f"{f}: original_inference_steps")
    kind = kind or kind_of_config(base)
    if kind is None:
        raise DkdmError(f"{f}: scheduler {base.get('_class_name')!r} is not one dkdm samples with ({', '.join(KINDS.values())})")
    spacing = base.get("timestep_spacing", spacing) if kind == kind_of_config(base) else spacing
    return make_scheduler(SamplerConfig(scheduler=kind, steps=steps, timestep_spacing=spacing), base)


def noise_config(path: str | Path, teacher_config: dict) -> dict:
    """The scheduler config to sample this student with at any kind and steps: the teacher's, unless the student's
    own exported config predicts another quantity (a few-step student's v-prediction): then its own."""
    f = student_folder(path) / "scheduler" / "scheduler_config.json"
    try:
        own = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return teacher_config
    if not isinstance(own, dict) or kind_of_config(own) is None:
        return teacher_config
    differs = own.get("prediction_type", "epsilon") != teacher_config.get("prediction_type", "epsilon")
    return own if differs else teacher_config
