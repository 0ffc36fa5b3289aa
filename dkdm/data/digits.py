"""scikit-learn's bundled 8x8 digits as 1x16x16 images in [-1, 1]: the offline real data set."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def load_digits_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits, bilinearly upsampled to `size`, scaled to [-1, 1]; returns (images, labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) * 2 - 1
    return x, torch.from_numpy(d.target.astype(np.int64))


def split_indices(n: int, held_out: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train/held-out split so the classifier's accuracy is measured on unseen digits."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * held_out))
    return perm[k:], perm[:k]
