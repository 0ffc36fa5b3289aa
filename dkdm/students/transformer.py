"""`transformer` students: a patch transformer (diffusers `DiTTransformer2DModel`, Peebles & Xie 2023) distilled
from a CNN teacher, DKDM's cross-architecture case. Unconditional teachers: one class label, always 0."""

from __future__ import annotations

from diffusers import DiTTransformer2DModel

from ..config import TransformerSpec
from ..errors import DkdmError


def build_transformer_student(teacher_cfg: dict, spec: TransformerSpec) -> DiTTransformer2DModel:
    if teacher_cfg.get("cross_attention_dim") is not None:
        raise DkdmError("a transformer student is built for unconditional teachers only (DiT has no text "
                        "cross-attention); use --student narrow or blocks for a text-conditioned teacher")
    size = teacher_cfg["sample_size"]
    size = int(size if isinstance(size, int) else size[0])
    if size % spec.patch_size:
        raise DkdmError(f"transformer patch_size {spec.patch_size} must divide the image size {size}")
    c_in, c_out = int(teacher_cfg["in_channels"]), int(teacher_cfg["out_channels"])
    return DiTTransformer2DModel(num_attention_heads=spec.num_attention_heads, attention_head_dim=spec.attention_head_dim,
                                 in_channels=c_in, out_channels=c_out, num_layers=spec.num_layers, sample_size=size,
                                 patch_size=spec.patch_size, num_embeds_ada_norm=1, norm_num_groups=1)
