"""Consistency distillation (Song et al. 2023; LCM, Luo et al. 2023) from the cache: the teacher's ODE step
x_{t_i} -> x_{t_j} is two adjacent cached states of one trajectory (no teacher at train time), the target is an
EMA copy of the student, and the student is parametrised as LCM's
    f(x, t) = c_skip(t)·x + c_out(t)·x0(x, t)     (diffusers LCMScheduler's boundary scalings, f(x, 0) = x),
so diffusers' LCMScheduler samples it at 1-8 steps. Loss: ||f_θ(x_i, t_i) - sg f_θ⁻(x_j, t_j)||² with
f_θ⁻ = x0 at the endpoint, plus optionally `endpoint_weight`·||f_θ(x_i, t_i) - x0||² (the cached trajectory's
own endpoint: the exact consistency target, which shortens the walk of the boundary condition up the grid)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ...students.call import model_call
from .common import Alphas, PairBatch, x0_from_v


class ConsistencyObjective:
    name = "consistency"
    units = {"cd_mse": "MSE between f_θ(x_i,t_i) and the EMA target f(x_j,t_j), per element, pixels in [-1, 1]",
             "endpoint_mse": "MSE between f_θ(x_i,t_i) and the trajectory's x0, per element"}

    def __init__(self, alphas_cumprod: torch.Tensor, channels: int, lcm_sched, student, target_ema: float = 0.95,
                 endpoint_weight: float = 0.0):
        self.alpha, self.channels, self.lcm = Alphas(alphas_cumprod), channels, lcm_sched
        self.mu, self.endpoint_weight = target_ema, endpoint_weight
        self.target = copy.deepcopy(student).requires_grad_(False)

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(t.double())
        return c_skip.float().view(-1, 1, 1, 1), c_out.float().view(-1, 1, 1, 1)

    def f(self, model, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The consistency function: what LCMScheduler.step returns as `denoised` (before clipping)."""
        v = model_call(model, x, t, cond)[:, :self.channels].float()
        c_skip, c_out = self.scalings(t)
        return c_skip * x + c_out * x0_from_v(v, x, self.alpha(t))

    def __call__(self, b: PairBatch, student) -> tuple[torch.Tensor, dict]:
        pred = self.f(student, b.x_i, b.t_i, b.cond)
        with torch.no_grad():
            tgt = self.f(self.target, b.x_j, b.t_j, b.cond)
            tgt = torch.where(b.end_j.bool().view(-1, 1, 1, 1), b.x_j, tgt)
        cd = F.mse_loss(pred, tgt)
        parts = {"cd_mse": cd.detach()}
        loss = cd
        if self.endpoint_weight > 0:
            ep = F.mse_loss(pred, b.x0)
            loss = loss + self.endpoint_weight * ep
            parts["endpoint_mse"] = ep.detach()
        return loss, parts

    @torch.no_grad()
    def after_step(self, student) -> None:
        """θ⁻ <- μ·θ⁻ + (1-μ)·θ (LCM's target EMA, μ = 0.95)."""
        for pt, ps in zip(self.target.parameters(), student.parameters()):
            pt.lerp_(ps.detach().to(pt.dtype), 1.0 - self.mu)

    # the target network is part of the training state: an exact resume restores it (checkpoint `sources`)
    def state_dict(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.target.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.target.load_state_dict({k: v for k, v in state.items()})
