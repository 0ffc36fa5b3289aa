"""Class balance on prompts that name no class: how far the generated classes are from uniform.

SustainDiffusion measures gender and ethnicity balance of images made from neutral prompts; on digits the
class is the digit, read by the digits classifier. Two standard readings of one histogram: total-variation
distance to uniform (0 = balanced, 1 - 1/K = one class only) and entropy normalised by log K (1 = balanced).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DkdmError


def class_histogram(labels, num_classes: int = 10) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise DkdmError("bias needs at least one classified image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DkdmError(f"class labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes)


def tv_to_uniform(counts) -> float:
    """0.5 * sum_k |p_k - 1/K|."""
    p = np.asarray(counts, dtype=np.float64)
    p = p / p.sum()
    return float(0.5 * np.abs(p - 1.0 / len(p)).sum())


def normalised_entropy(counts) -> float:
    """-sum_k p_k log p_k / log K, with 0 log 0 = 0."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(counts)))


@torch.no_grad()
def classify_digits(images: torch.Tensor, net=None) -> np.ndarray:
    """The digit the embedded digits classifier (or `net`) reads in each 1x16x16 image."""
    from ..evaluate.digits_features import load_digits_extractor

    if tuple(images.shape[1:]) != (1, 16, 16):
        raise DkdmError(f"the bias objective reads digits from 1x16x16 images; this model makes {tuple(images.shape[1:])}")
    return (net or load_digits_extractor())(images.cpu().float()).argmax(1).numpy()


def bias_of(labels, num_classes: int = 10) -> dict:
    counts = class_histogram(labels, num_classes)
    return {"tv_to_uniform": tv_to_uniform(counts), "normalised_entropy": normalised_entropy(counts),
            "histogram": counts.tolist(), "samples": int(counts.sum())}


def tv_interval(counts, level: float = 0.9, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Parametric bootstrap of TV over the sampling of this many images from the observed class shares: two
    settings whose intervals overlap are not told apart by this sample size."""
    c = np.asarray(counts, dtype=np.int64)
    n = int(c.sum())
    b = np.random.default_rng(seed).multinomial(n, c / n, size=draws) / n
    tv = 0.5 * np.abs(b - 1.0 / len(c)).sum(1)
    lo, hi = np.quantile(tv, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def uniform_floor(n: int, num_classes: int = 10, draws: int = 4000, seed: int = 0) -> float:
    """Mean TV of n images from a perfectly balanced sampler: the lowest bias n samples can show."""
    b = np.random.default_rng(seed).multinomial(n, [1.0 / num_classes] * num_classes, size=draws) / n
    return float((0.5 * np.abs(b - 1.0 / num_classes).sum(1)).mean())
