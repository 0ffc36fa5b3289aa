"""DKDM eps matching on cached/live/real records (the default objective): eps MSE on every row, the KL on teacher
rows with learned variance, BK-SDM feature KD on the rows the teacher's block outputs were taken on."""

from __future__ import annotations

import torch

from ...students.call import model_call
from ..losses import eps_mse, feature_terms, kl_learned_variance


class EpsObjective:
    name = "eps"
    units = {"eps_mse": "eps-space MSE per element", "kl": "bits per dimension", "feature_kd": "block-output MSE, summed"}

    def __init__(self, channels: int, noise_sched=None, kl_weight: float = 0.0, feature_kd: float = 0.0, student_tap=None):
        self.channels, self.noise_sched, self.kl_weight = channels, noise_sched, kl_weight
        self.feature_kd, self.tap = feature_kd, student_tap

    def __call__(self, b, student) -> tuple[torch.Tensor, dict]:
        out = model_call(student, b.x, b.t, b.cond)
        loss = eps_mse(out, b.eps, self.channels)
        parts = {"eps_mse": loss.detach()}
        c = self.channels
        if self.kl_weight > 0 and b.n_teacher and b.teacher_out.shape[1] == 2 * c and out.shape[1] == 2 * c:
            n = b.n_teacher
            kl = kl_learned_variance(out[:n], b.teacher_out, b.x[:n], b.t[:n], self.noise_sched, c)
            loss = loss + self.kl_weight * kl
            parts["kl"] = kl.detach()
        if self.feature_kd > 0 and b.teacher_feats is not None:
            terms = feature_terms(self.tap.take(b.live_rows), b.teacher_feats)
            fk = sum(terms)
            loss = loss + self.feature_kd * fk
            parts["feature_kd"] = fk.detach()
            # each block's term apart (TensorBoard; the CSV keeps the sum)
            parts.update({f"feature_kd/{n}": v.detach() for n, v in zip(getattr(self.tap, "names", ()), terms)})
        return loss, parts
