"""What the few-step objectives share: a batch of state pairs, and the v-parametrisation of a student.

Few-step students predict v (Salimans & Ho 2022, progressive distillation): with this teacher's cosine schedule
alpha_bar(999) = 2.4e-9, so x0 from an eps output is eps error x 2e4 at the first step of a 1-4 step sampler;
x0 = sqrt(a)·x - sqrt(1-a)·v is well conditioned at every t. diffusers' DDIM and LCM schedulers sample such a
student with prediction_type = "v_prediction"."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTION = "v_prediction"


@dataclass
class PairBatch:
    """Pairs (x_i at t_i) -> (x_j at t_j) of one cached trajectory; end_j marks x_j = the endpoint x0 (t_j = 0)."""

    x_i: torch.Tensor
    t_i: torch.Tensor
    x_j: torch.Tensor
    t_j: torch.Tensor
    end_j: torch.Tensor  # (B,) bool
    x0: torch.Tensor  # the trajectory's endpoint
    cond: torch.Tensor | None = None  # (B, seq, dim) prompt embeddings (text-conditioned caches)


class Alphas:
    """alpha_bar at per-sample timesteps from the training schedule; at an endpoint DDIM's final_alpha_cumprod, the
    value the teacher's last step used (1 with set_alpha_to_one, alpha_bar_0 for Stable-Diffusion-style configs)."""

    def __init__(self, alphas_cumprod: torch.Tensor, final: float = 1.0):
        self.ac, self.final = alphas_cumprod.detach().to(torch.float64), float(final)

    def __call__(self, t: torch.Tensor, end: torch.Tensor | None = None) -> torch.Tensor:
        a = self.ac[t.detach().cpu().long()]
        if end is not None:
            a = torch.where(end.cpu().bool(), torch.full_like(a, self.final), a)
        return a.view(-1, 1, 1, 1).float().to(t.device)


def x0_from_v(v: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a.sqrt() * x - (1 - a).sqrt() * v
