"""One optimizer step of the student: eps MSE on every row, the KL on teacher rows with learned
variance, feature KD on live-teacher rows; accelerate handles DDP, accumulation and precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..students.call import model_call
from .losses import eps_mse, feature_terms, kl_learned_variance


@dataclass
class Batch:
    x: torch.Tensor  # (B,C,H,W) noisy inputs: teacher rows first, then real rows
    t: torch.Tensor  # (B,)
    eps: torch.Tensor  # (B,C,H,W) eps targets: teacher output or the real images' noise
    teacher_out: torch.Tensor | None = None  # (n_teacher, C or 2C, H, W) full teacher output
    teacher_feats: list | None = None  # block outputs of the teacher on the rows `live_rows` (live or cached rows)
    live_rows: slice | None = None
    cond: torch.Tensor | None = None  # (B, seq, dim) prompt embeddings for a text-conditioned student

    @property
    def n_teacher(self) -> int:
        return 0 if self.teacher_out is None else len(self.teacher_out)


class StudentTrainer:
    def __init__(self, acc, student, opt, lr_sched, ema, channels: int, noise_sched=None, kl_weight: float = 0.0,
                 feature_kd: float = 0.0, student_tap=None, clip: float = 1.0):
        self.acc, self.student, self.opt, self.lr_sched, self.ema = acc, student, opt, lr_sched, ema
        self.channels, self.noise_sched, self.kl_weight = channels, noise_sched, kl_weight
        self.feature_kd, self.tap, self.clip = feature_kd, student_tap, clip

    def loss(self, b: Batch) -> tuple[torch.Tensor, dict]:
        out = model_call(self.student, b.x, b.t, b.cond)
        loss = eps_mse(out, b.eps, self.channels)
        parts = {"eps_mse": loss.detach()}
        if self.kl_weight > 0 and b.n_teacher and b.teacher_out.shape[1] == 2 * self.channels and out.shape[1] == 2 * self.channels:
            n = b.n_teacher
            kl = kl_learned_variance(out[:n], b.teacher_out, b.x[:n], b.t[:n], self.noise_sched, self.channels)
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

    def step(self, micro_batches) -> tuple[float, dict]:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss."""
        total, parts_sum = 0.0, {}
        for b in micro_batches:
            with self.acc.accumulate(self.student):
                loss, parts = self.loss(b)
                self.acc.backward(loss)
                if self.acc.sync_gradients and self.clip:
                    self.acc.clip_grad_norm_(self.student.parameters(), self.clip)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            total += loss.item()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.item()
        self.lr_sched.step()
        self.ema.step(self.student.parameters())
        n = len(micro_batches)
        return total / n, {k: v / n for k, v in parts_sum.items()}
