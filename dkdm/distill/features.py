"""Forward hooks that collect down/up block outputs for feature-level KD (BK-SDM style)."""

from __future__ import annotations

import torch

from ..errors import DkdmError


class BlockTap:
    """Records the output of every down and up block of a UNet2DModel on each forward."""

    def __init__(self, unet, detach: bool = False):
        self.feats: list[torch.Tensor | None] = []
        self.detach = detach
        blocks = list(unet.down_blocks) + list(unet.up_blocks)
        self.feats = [None] * len(blocks)
        self._handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i):
        def f(_module, _inp, out):
            h = out[0] if isinstance(out, tuple) else out  # down blocks return (hidden, residuals)
            self.feats[i] = h.detach() if self.detach else h
        return f

    def take(self, rows: slice | None = None) -> list[torch.Tensor]:
        return [f if rows is None else f[rows] for f in self.feats]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def check_matching_blocks(teacher_cfg: dict, student_cfg: dict) -> None:
    """Feature KD compares block outputs one to one: same number of blocks and the same widths."""
    t, s = tuple(teacher_cfg["block_out_channels"]), tuple(student_cfg["block_out_channels"])
    if t != s:
        raise DkdmError(f"--feature-kd needs a student whose blocks match the teacher's (widths {t}, got {s}); "
                        "BK-SDM students drop layers inside blocks (fewer layers_per_block) but keep widths")
