"""DKDM objectives (Xiang et al., CVPR 2025, eq. 6): the student matches the teacher's output."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eps_mse(student_out: torch.Tensor, teacher_out: torch.Tensor, channels: int) -> torch.Tensor:
    """||eps_T(x_t,t) - eps_S(x_t,t)||² on the eps channels (variance channels are handled by the KL)."""
    return F.mse_loss(student_out[:, :channels].float(), teacher_out[:, :channels].float())
