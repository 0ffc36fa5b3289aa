"""`narrow` students: UNets built from a spec (the digits teacher, and width-scaled students), random init."""

from __future__ import annotations

import dataclasses

from diffusers import UNet2DConditionModel, UNet2DModel

from ..config import UNetSpec
from ..errors import DkdmError


def build_unet(spec: UNetSpec) -> UNet2DModel | UNet2DConditionModel:
    """UNet2DModel, or UNet2DConditionModel (cross-attention at `attention_levels`) when the spec has a cross_attention_dim."""
    levels = len(spec.block_out_channels)
    if any(c % spec.norm_num_groups for c in spec.block_out_channels):
        raise DkdmError(f"block_out_channels {spec.block_out_channels} must be multiples of norm_num_groups={spec.norm_num_groups}")
    conditional = spec.cross_attention_dim is not None
    if conditional and not any(0 <= i < levels for i in spec.attention_levels):
        raise DkdmError(f"a text-conditioned student needs cross-attention: attention_levels {spec.attention_levels} "
                        f"names none of its {levels} levels")
    attn = "CrossAttnDownBlock2D" if conditional else "AttnDownBlock2D"
    down = tuple(attn if i in spec.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    out_ch = spec.out_channels * (2 if spec.learned_variance and spec.out_channels == spec.in_channels else 1)
    common = dict(sample_size=spec.sample_size, in_channels=spec.in_channels, out_channels=out_ch,
                  block_out_channels=tuple(spec.block_out_channels), layers_per_block=spec.layers_per_block,
                  down_block_types=down, up_block_types=up, norm_num_groups=spec.norm_num_groups,
                  attention_head_dim=spec.attention_head_dim)
    if conditional:
        return UNet2DConditionModel(cross_attention_dim=spec.cross_attention_dim, **common)
    return UNet2DModel(**common)


def student_spec_for(teacher_config: dict, spec: UNetSpec) -> UNetSpec:
    """Student geometry follows the teacher (image size, channels, variance); width comes from spec."""
    in_ch = int(teacher_config["in_channels"])
    learned = int(teacher_config["out_channels"]) == 2 * in_ch
    cross = teacher_config.get("cross_attention_dim")  # only UNet2DConditionModel configs have it
    if isinstance(cross, (list, tuple)):
        cross = int(cross[0])
    return dataclasses.replace(
        spec,
        cross_attention_dim=int(cross) if cross is not None else None,
        sample_size=int(teacher_config["sample_size"]) if not isinstance(teacher_config["sample_size"], (list, tuple)) else int(teacher_config["sample_size"][0]),
        in_channels=in_ch,
        out_channels=in_ch,
        learned_variance=learned,
    )


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
