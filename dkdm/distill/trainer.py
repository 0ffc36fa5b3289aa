"""One optimizer step of the student under its objective (eps matching by default, see distill/objectives);
accelerate handles DDP, accumulation and precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objectives.eps import EpsObjective


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
                 feature_kd: float = 0.0, student_tap=None, clip: float = 1.0, objective=None):
        self.acc, self.student, self.opt, self.lr_sched, self.ema = acc, student, opt, lr_sched, ema
        self.channels, self.clip = channels, clip
        # the loss: eps matching (+KL, +feature KD) unless a few-step objective is given (dkdm.distill.objectives)
        self.objective = objective or EpsObjective(channels, noise_sched, kl_weight, feature_kd, student_tap)

    def loss(self, b) -> tuple[torch.Tensor, dict]:
        return self.objective(b, self.student)

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
        if hasattr(self.objective, "after_step"):  # e.g. the consistency objective's EMA target
            self.objective.after_step(self.acc.unwrap_model(self.student))
        n = len(micro_batches)
        return total / n, {k: v / n for k, v in parts_sum.items()}
