"""Forward hooks that collect block outputs for feature-level KD (BK-SDM style), and which student block is
compared with which teacher block."""

from __future__ import annotations

import torch

from ..errors import DkdmError


class BlockTap:
    """Records the output of the named blocks (default: every down and up block of a UNet) on each forward."""

    def __init__(self, unet, names: list[str] | None = None, detach: bool = False):
        if names is None:
            names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + \
                    [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
        self.names, self.detach = list(names), detach
        self.feats: list[torch.Tensor | None] = [None] * len(self.names)
        self._handles = [unet.get_submodule(n).register_forward_hook(self._hook(i)) for i, n in enumerate(self.names)]

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


def feature_pairs(teacher_cfg: dict, student, student_info: dict) -> dict[str, str]:
    """Student block -> teacher block. A blocks student: from its removal map (the blocks its layers came from);
    a narrow student: one to one, which needs the teacher's block widths."""
    if student_info.get("kind") == "blocks":
        return dict(student_info["blocks"])
    if student_info.get("kind") == "transformer":
        raise DkdmError("--feature-kd compares UNet block outputs; a transformer student has none to match")
    check_matching_blocks(teacher_cfg, dict(student.config))
    n = len(teacher_cfg["block_out_channels"])
    return {f"{k}.{i}": f"{k}.{i}" for k in ("down_blocks", "up_blocks") for i in range(n)}


def check_matching_blocks(teacher_cfg: dict, student_cfg: dict) -> None:
    """Feature KD compares block outputs one to one: same number of blocks and the same widths."""
    t, s = tuple(teacher_cfg["block_out_channels"]), tuple(student_cfg["block_out_channels"])
    if t != s:
        raise DkdmError(f"--feature-kd needs a student whose blocks match the teacher's (widths {t}, got {s}); "
                        "use a blocks student (--student bk-tiny, --student blocks --remove ...), which keeps widths")
