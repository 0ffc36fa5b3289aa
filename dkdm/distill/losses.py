"""DKDM objectives (Xiang et al., CVPR 2025, eq. 6): the student matches the teacher's output."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eps_mse(student_out: torch.Tensor, teacher_out: torch.Tensor, channels: int) -> torch.Tensor:
    """||eps_T(x_t,t) - eps_S(x_t,t)||² on the eps channels (variance channels are handled by the KL)."""
    return F.mse_loss(student_out[:, :channels].float(), teacher_out[:, :channels].float())


def _posterior(sched, eps: torch.Tensor, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and log-variance of p(x_{t-1}|x_t) from (eps, v) with diffusers' `learned_range` rule.

    Per-sample t, one training step back (t-1), using the scheduler's own `alphas_cumprod`; the
    log-variance interpolates log(beta~_t) and log(beta_t) like `DDPMScheduler._get_variance`
    (Nichol & Dhariwal 2021, eq. 15); the mean is eq. 7 of Ho et al. 2020 with x0 from eps.
    """
    ac = sched.alphas_cumprod.to(x_t.device, torch.float32)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    a_t = ac[t].view(shape)
    a_prev = torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones_like(ac[t])).view(shape)
    beta = 1 - a_t / a_prev
    post_var = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)
    frac = (v + 1) / 2
    log_var = frac * torch.log(beta) + (1 - frac) * torch.log(post_var)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
    return mean, log_var


def kl_learned_variance(student_out: torch.Tensor, teacher_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        sched, channels: int) -> torch.Tensor:
    """KL(p_T(x_{t-1}|x_t) || p_S(x_{t-1}|x_t)) per dimension, student mean stop-gradiented (IDDPM L_vlb)."""
    s_eps, s_v = student_out[:, :channels].float(), student_out[:, channels:].float()
    t_eps, t_v = teacher_out[:, :channels].float(), teacher_out[:, channels:].float()
    mu_t, lv_t = _posterior(sched, t_eps, t_v, x_t.float(), t)
    mu_s, lv_s = _posterior(sched, s_eps.detach(), s_v, x_t.float(), t)
    kl = 0.5 * (lv_s - lv_t + torch.exp(lv_t - lv_s) + (mu_t - mu_s) ** 2 * torch.exp(-lv_s) - 1.0)
    return kl.mean()


def feature_terms(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """BK-SDM feature KD: the MSE of each matching block output (the loss sums them, every term weighted 1)."""
    return [F.mse_loss(s.float(), t.float()) for s, t in zip(student_feats, teacher_feats)]


def feature_mse(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """BK-SDM feature KD: sum over matching block outputs of the MSE, every term weighted 1."""
    return sum(feature_terms(student_feats, teacher_feats))
