"""Paired fidelity: same initial noise, deterministic sampler, per-seed distance between teacher and student images."""

from __future__ import annotations

import numpy as np
import torch

DETERMINISTIC = {"ddim", "dpm++", "euler"}  # DDIM only with eta = 0; DDPM draws fresh noise every step


def is_deterministic(scheduler: str, eta: float) -> bool:
    return scheduler in DETERMINISTIC and (scheduler != "ddim" or eta == 0)


def summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "p05": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(v.max()), "n": int(len(v))}


def paired_scores(teacher: torch.Tensor, student: torch.Tensor, teacher_feats=None, student_feats=None) -> dict:
    """Per-seed pixel RMSE (images in [-1, 1]) and feature-space L2; zero for a model against itself."""
    if teacher.shape != student.shape:
        raise ValueError(f"paired images differ in shape: {tuple(teacher.shape)} vs {tuple(student.shape)}")
    rmse = (teacher.double() - student.double()).pow(2).flatten(1).mean(1).sqrt().numpy()
    out = {"pixel_rmse": summary(rmse), "pixel_rmse_per_seed": rmse.tolist()}
    if teacher_feats is not None and student_feats is not None:
        out["feature_l2"] = summary(np.linalg.norm(np.asarray(teacher_feats) - np.asarray(student_feats), axis=1))
    return out
