"""DKDM objectives (Xiang et al., CVPR 2025, eq. 6): the student matches the teacher's output.

Units and weights follow the official code (qianlong0502/DKDM, `training_losses_kd`):
loss = mean (eps_T - eps_S)^2  +  kl_weight * KL(p_T(x_{t-1}|x_t) || p_S(x_{t-1}|x_t)) in bits per dimension,
kl_weight = 1 per term (IDDPM's RESCALED_MSE scales the term by T/1000 = 1; IDDPM's λ = 0.001 weighs a
*sum* over all T terms, i.e. 1 per term). The KL is taken at every t, t = 0 included, with the clipped
posterior log-variance (log β̃_1 at t = 0), as DKDM's `_vb_terms_bpd_kd` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def eps_mse(student_out: torch.Tensor, teacher_out: torch.Tensor, channels: int) -> torch.Tensor:
    """||eps_T(x_t,t) - eps_S(x_t,t)||² on the eps channels (variance channels are handled by the KL)."""
    return F.mse_loss(student_out[:, :channels].float(), teacher_out[:, :channels].float())


def coefficients(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 tables of the forward process (Ho et al. 2020 eq. 7; Nichol & Dhariwal 2021 eq. 15)."""
    b = betas.detach().to("cpu", torch.float64)
    a = 1.0 - b
    ac = torch.cumprod(a, 0)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)  # β̃_t; β̃_0 = 0
    # log β̃_0 = -inf: like guided-diffusion, use log β̃_1 at t = 0 ("posterior_log_variance_clipped")
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    return {
        "log_beta": torch.log(b),
        "post_log_var": post_log_var,
        "sqrt_recip_ac": torch.sqrt(1.0 / ac),
        "sqrt_recipm1_ac": torch.sqrt(1.0 / ac - 1.0),
        "mean_coef1": b * torch.sqrt(ac_prev) / (1.0 - ac),
        "mean_coef2": (1.0 - ac_prev) * torch.sqrt(a) / (1.0 - ac),
    }


_TABLES: dict = {}


def _tables(sched, device) -> dict[str, torch.Tensor]:
    """The tables on `device`, computed and moved once per schedule (not five host->device copies per call).

    Keyed on the betas' values, not on the scheduler's id or storage address: both are reused once a
    scheduler is freed, and a stale table from another schedule would be silently wrong."""
    betas = sched.betas.detach().cpu()
    hit = _TABLES.get("entry")
    same = hit is not None and hit[1] == str(device) and hit[0].dtype == betas.dtype and hit[0].shape == betas.shape
    if not (same and torch.equal(hit[0], betas)):
        _TABLES["entry"] = (betas.clone(), str(device), {k: v.to(device) for k, v in coefficients(betas).items()})
    return _TABLES["entry"][2]


def _posterior(sched, eps: torch.Tensor, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and log-variance of p(x_{t-1}|x_t) from (eps, v), `learned_range` rule, per-sample t.

    log-variance = frac·log β_t + (1-frac)·log β̃_t (clipped), frac = (v+1)/2 (Nichol & Dhariwal eq. 15);
    mean = coef1·x0 + coef2·x_t with x0 from eps, unclipped (Ho et al. eq. 7). Computed in float64."""
    at = _lookup(sched, x_t, t)
    x, e, frac = x_t.double(), eps.double(), (v.double() + 1) / 2
    log_var = frac * at("log_beta") + (1 - frac) * at("post_log_var")
    x0 = at("sqrt_recip_ac") * x - at("sqrt_recipm1_ac") * e
    mean = at("mean_coef1") * x0 + at("mean_coef2") * x
    return mean, log_var


def _lookup(sched, x_t: torch.Tensor, t: torch.Tensor):
    """name -> that float64 table at each sample's t, shaped to broadcast over x_t."""
    tab = _tables(sched, x_t.device)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    tc = t.detach().to(x_t.device, torch.long)
    return lambda name: tab[name][tc].view(shape)


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """-log p(x0) of 8-bit data (bins of width 2/255 in [-1, 1], open-ended edge bins) under N(mean, e^log_var),
    elementwise, in nats: the t = 0 decoder term of the variational bound (Ho et al. 2020, sec. 3.3)."""
    x, inv_std = x0.double(), torch.exp(-0.5 * log_var)
    upper = torch.special.ndtr(inv_std * (x - mean + 1.0 / 255))
    lower = torch.special.ndtr(inv_std * (x - mean - 1.0 / 255))
    prob = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1.0 - lower, upper - lower))
    return -torch.log(prob.clamp(min=1e-12))


def vlb_term(model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sched, channels: int) -> torch.Tensor:
    """L_t of the variational bound in bits per dimension, batch mean, for training a learned-variance model on
    data (IDDPM's hybrid loss): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t ≥ 1, the decoder NLL at t = 0. The
    model's mean is stop-gradiented, so the term trains only the variance (the eps MSE trains the mean)."""
    mean_p, lv_p = _posterior(sched, model_out[:, :channels].detach(), model_out[:, channels:], x_t, t)
    at = _lookup(sched, x_t, t)
    mean_q = at("mean_coef1") * x0.double() + at("mean_coef2") * x_t.double()
    kl = normal_kl(mean_q, at("post_log_var"), mean_p, lv_p)
    nll = discretized_gaussian_nll(x0, mean_p, lv_p)
    per_dim = torch.where((t == 0).view((-1,) + (1,) * (x_t.dim() - 1)).to(x_t.device), nll, kl)
    return (per_dim.mean() / LN2).float()


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def kl_learned_variance(student_out: torch.Tensor, teacher_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        sched, channels: int) -> torch.Tensor:
    """KL(p_T(x_{t-1}|x_t) || p_S(x_{t-1}|x_t)) in bits per dimension, batch mean; the student's mean is
    stop-gradiented, so the term trains only its variance (IDDPM's L_vlb trick, DKDM `_vb_terms_bpd_kd`)."""
    s_eps, s_v = student_out[:, :channels], student_out[:, channels:]
    t_eps, t_v = teacher_out[:, :channels], teacher_out[:, channels:]
    mu_t, lv_t = _posterior(sched, t_eps, t_v, x_t, t)
    mu_s, lv_s = _posterior(sched, s_eps.detach(), s_v, x_t, t)
    return (normal_kl(mu_t, lv_t, mu_s, lv_s).mean() / LN2).float()


def feature_terms(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """BK-SDM feature KD: the MSE of each matching block output (the loss sums them, every term weighted 1)."""
    return [F.mse_loss(s.float(), t.float()) for s, t in zip(student_feats, teacher_feats)]


def feature_mse(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """BK-SDM feature KD: sum over matching block outputs of the MSE, every term weighted 1."""
    return sum(feature_terms(student_feats, teacher_feats))
