"""FID and KID from feature matrices, with clean-fid's formulas.

`cleanfid.fid` cannot be imported without torchvision (no CPU build exists for our torch), so the
two estimators are written here following clean-fid 0.1.35 (`frechet_distance`, `kernel_distance`):
Fréchet distance of Gaussians (Heusel et al. 2017) and the unbiased polynomial-kernel MMD
(Bińkowski et al. 2018), averaged over random subsets.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from ..errors import DkdmError


def stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise DkdmError(f"need at least 2 feature vectors to compute statistics, got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """Matrix square root; scipy >= 1.16 deprecates `disp` (it returned an error estimate too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are expected with few samples
        return linalg.sqrtm(a)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(feats1: np.ndarray, feats2: np.ndarray) -> float:
    return frechet_distance(*stats(feats1), *stats(feats2))


def kid(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD² with kernel k(x,y) = (x·y/d + 1)³, mean over subsets."""
    x = np.asarray(feats1, dtype=np.float64)
    y = np.asarray(feats2, dtype=np.float64)
    n = x.shape[1]
    m = min(len(x), len(y), max_subset_size)
    if m < 2:
        raise DkdmError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    t = 0.0
    for _ in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx = (a @ a.T / n + 1) ** 3
        kyy = (b @ b.T / n + 1) ** 3
        kxy = (a @ b.T / n + 1) ** 3
        t += (kxx.sum() - np.diag(kxx).sum() + kyy.sum() - np.diag(kyy).sum()) / (m * (m - 1)) - 2 * kxy.mean()
    return float(t / num_subsets)
