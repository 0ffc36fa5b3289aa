"""Student builders, one per kind: `narrow` (a smaller UNet, random init), `blocks` (the teacher with named parts
removed, kept weights copied), `transformer` (a DiT); `scan` ranks the removable parts of a teacher."""

from __future__ import annotations

from ..errors import DkdmError
from .blocks import PRESETS, build_blocks_student, removable_parts
from .call import load_model, model_call
from .narrow import build_unet, count_params, student_spec_for

KINDS = ("narrow", "blocks", "transformer")

__all__ = ["KINDS", "PRESETS", "build_student", "build_unet", "count_params", "load_model", "model_call",
           "removable_parts", "resolve_kind", "student_spec_for"]


def resolve_kind(kind: str, remove: list[str]) -> tuple[str, list[str]]:
    """`--student bk-tiny` is shorthand for `--student blocks --remove bk-tiny`."""
    if kind in PRESETS:
        return "blocks", [kind, *remove]
    if kind not in KINDS:
        raise DkdmError(f"unknown student {kind!r}; choose {', '.join(KINDS)} or a preset ({', '.join(PRESETS)})")
    if kind == "blocks" and not remove:
        raise DkdmError(f"--student blocks needs --remove PARTS (e.g. mid,stage.1.attn) or a preset ({', '.join(PRESETS)})")
    if kind != "blocks" and remove:
        raise DkdmError(f"--remove applies to --student blocks, not {kind}")
    return kind, list(remove)


def build_student(cfg, spec, teacher_unet=None, teacher_cfg: dict | None = None):
    """(student, info) for `cfg.student_kind`; info (the removal map for blocks) goes into the export's card."""
    from .transformer import build_transformer_student

    kind, remove = resolve_kind(cfg.student_kind, list(cfg.student_remove))
    if kind == "narrow":
        return build_unet(spec), {"kind": "narrow"}
    if kind == "transformer":
        return build_transformer_student(teacher_cfg, cfg.transformer), {"kind": "transformer"}
    if teacher_unet is None:
        raise DkdmError("a blocks student copies the teacher's weights: give --teacher")
    student, removal = build_blocks_student(teacher_unet, remove)
    return student.float(), removal
