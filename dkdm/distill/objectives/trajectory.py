"""Trajectory distillation: one student step jumps x_{t_i} -> x_{t_j} between two cached states of one teacher
trajectory (j = i + jump states along the walk; the endpoint x0 has t_j = 0). A generalisation of Luhman & Luhman
(2021, one step noise -> image) to multi-step jumps, with exact teacher supervision and no teacher at train time.

The student's step is DDIM's: x_j = sqrt(a_j)·x0 + sqrt(1-a_j)·eps with (x0, eps) consistent with x_i. That is
affine in x0, so the state x_j is reached exactly when x0 equals
    x0* = (x_j - r·x_i) / (sqrt(a_j) - r·sqrt(a_i)),   r = sqrt((1-a_j)/(1-a_i)),
and the loss is the x0-space MSE to x0*. The student predicts v (see common.py); it serves the step count whose
trailing grid jumps `jump` cache states per step (one student per grid: the jump length from t_i is fixed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...students.call import model_call
from .common import Alphas, PairBatch, x0_from_v


def jump_target(x_i: torch.Tensor, x_j: torch.Tensor, a_i: torch.Tensor, a_j: torch.Tensor) -> torch.Tensor:
    """The x0 whose DDIM step from (x_i, a_i) lands exactly on x_j at a_j."""
    r = ((1 - a_j) / (1 - a_i)).sqrt()
    return (x_j - r * x_i) / (a_j.sqrt() - r * a_i.sqrt())


def ddim_jump(x0: torch.Tensor, x_i: torch.Tensor, a_i: torch.Tensor, a_j: torch.Tensor) -> torch.Tensor:
    """DDIM (eta 0) from x_i to a_j with the prediction x0 (eps re-derived from x_i and x0)."""
    eps = (x_i - a_i.sqrt() * x0) / (1 - a_i).sqrt()
    return a_j.sqrt() * x0 + (1 - a_j).sqrt() * eps


class TrajectoryObjective:
    name = "trajectory"
    units = {"x0_mse": "x0-space MSE per element, pixels in [-1, 1]", "xj_mse": "MSE of the jumped state x_{t_j} per element"}

    def __init__(self, alphas_cumprod: torch.Tensor, channels: int, final_alpha: float = 1.0):
        self.alpha, self.channels = Alphas(alphas_cumprod, final_alpha), channels

    def __call__(self, b: PairBatch, student) -> tuple[torch.Tensor, dict]:
        a_i, a_j = self.alpha(b.t_i), self.alpha(b.t_j, b.end_j)
        v = model_call(student, b.x_i, b.t_i, b.cond)[:, :self.channels]
        x0 = x0_from_v(v.float(), b.x_i, a_i)
        loss = F.mse_loss(x0, jump_target(b.x_i, b.x_j, a_i, a_j))
        with torch.no_grad():
            xj = F.mse_loss(ddim_jump(x0, b.x_i, a_i, a_j), b.x_j)
        return loss, {"x0_mse": loss.detach(), "xj_mse": xj}
