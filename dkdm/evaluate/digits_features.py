"""A small digits classifier whose penultimate layer is the feature space for FID/KID on digits.

Inception weights cannot be downloaded here, and Inception features of 16x16 digits mean little;
a classifier trained on the digits themselves is the standard substitute for small data sets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save

from ..data.digits import load_digits_images, split_indices
from ..errors import DkdmError
from ..runtime import atomic_write_bytes, atomic_write_json

BUILTIN = Path(__file__).resolve().parent.parent / "builtin" / "digits-classifier"
FEATURE_DIM = 128


class DigitsNet(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,1,16,16) in [-1,1] -> (B,128) penultimate activations."""
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def train_digits_classifier(out: str | Path = BUILTIN, epochs: int = 40, seed: int = 0) -> dict:
    """Train on 80% of the digits (with small shifts), report accuracy on the held-out 20%."""
    torch.manual_seed(seed)
    x, y = load_digits_images(16)
    tr, te = split_indices(len(x), 0.2, seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            xb = x[b]
            sx, sy = torch.randint(-1, 2, (2,), generator=g).tolist()  # ±1 px shift: robustness to sampler jitter
            xb = torch.roll(xb, shifts=(sx, sy), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[te]).argmax(1) == y[te]).float().mean().item()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors", save({k: v.contiguous() for k, v in net.state_dict().items()}))
    meta = {"held_out_accuracy": acc, "held_out": len(te), "train": len(tr), "epochs": epochs, "seed": seed,
            "feature_dim": FEATURE_DIM, "sha256": _sha256(out / "model.safetensors")}
    atomic_write_json(out / "meta.json", meta)
    return meta


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_digits_extractor(folder: str | Path = BUILTIN, device="cpu") -> DigitsNet:
    """Load and sha256-check the committed classifier (k-diffusion checks its extractors the same way)."""
    folder = Path(folder)
    meta_f, weights = folder / "meta.json", folder / "model.safetensors"
    if not weights.is_file() or not meta_f.is_file():
        raise DkdmError(f"digits feature extractor missing in {folder}; run `dkdm train-features`")
    meta = json.loads(meta_f.read_text())
    if _sha256(weights) != meta["sha256"]:
        raise DkdmError(f"digits feature extractor {weights} does not match its recorded sha256")
    net = DigitsNet()
    net.load_state_dict(load_file(str(weights)))
    return net.to(device).eval().requires_grad_(False)


class DigitsFeatures:
    """Feature extractor callable: images in [-1,1] (B,1,16,16) -> (B,128) float64 numpy."""

    name = "digits-classifier"

    def __init__(self, device="cpu"):
        self.net = load_digits_extractor(device=device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor):
        feats = [self.net.features(images[i:i + 512].to(self.device).float()).double().cpu() for i in range(0, len(images), 512)]
        return torch.cat(feats).numpy()
