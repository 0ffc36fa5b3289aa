"""Feature extractors for FID/KID: clean-fid's Inception (offline, sha256-checked), the digits classifier, or a plug-in.

An extractor is any object with `name`, `fingerprint` (identifies its weights, for the reference-statistics
cache) and `__call__(images) -> np.ndarray (B, D)` taking images in [-1, 1], shape (B, C, H, W).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DkdmError
from ..imaging import to_uint8

# The TorchScript Inception clean-fid (and StyleGAN2-ADA, k-diffusion, torch-fidelity) use. Its sha256 is the
# digest k-diffusion checks in `k_diffusion/evaluation.py` (InceptionV3FeatureExtractor) for the same URL.
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
INCEPTION_ENV = "DKDM_INCEPTION"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_inception_path(path: str | None) -> Path:
    """--inception PATH, else $DKDM_INCEPTION; a folder means PATH/inception-2015-12-05.pt."""
    given = path or os.environ.get(INCEPTION_ENV, "")
    if not given:
        raise DkdmError(f"Inception weights not given: download {INCEPTION_FILE} from {INCEPTION_URL} and pass "
                        f"--inception PATH or set {INCEPTION_ENV}")
    p = Path(given).expanduser()
    if p.is_dir():
        p = p / INCEPTION_FILE
    if not p.is_file():
        raise DkdmError(f"Inception weights {p} not found: download {INCEPTION_FILE} from {INCEPTION_URL} "
                        f"(sha256 {INCEPTION_SHA256}) and pass --inception PATH or set {INCEPTION_ENV}")
    return p


def verify_sha256(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise DkdmError(f"{path} has sha256 {got}, not {expected} ({INCEPTION_FILE} from {INCEPTION_URL}); "
                        f"the file is wrong or damaged: obtain it again")


class InceptionFeatures:
    """clean-fid's 'clean' mode: uint8 images, PIL bicubic resize to 299x299 in float, Inception pool3 (2048-d)."""

    def __init__(self, path: str | None = None, device="cpu", sha256: str = INCEPTION_SHA256):
        from ..compat import clean_fid_parts

        InceptionV3W, build_resizer = clean_fid_parts()  # a missing extra says so before the weights are looked for
        weights = resolve_inception_path(path)
        verify_sha256(weights, sha256)
        # InceptionV3W loads FOLDER/inception-2015-12-05.pt; give it a folder holding that name for any file name.
        with tempfile.TemporaryDirectory() as tmp:
            os.symlink(weights.resolve(), Path(tmp) / INCEPTION_FILE)
            self.model = InceptionV3W(tmp, download=False, resize_inside=False).to(device).eval()
        self.resize = build_resizer("clean")
        self.device = device
        self.name = f"clean-fid {INCEPTION_FILE} (pool3, 2048-d, clean resize)"
        self.fingerprint = sha256

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        u8 = to_uint8(images)  # what a saved PNG holds: generated and real images are quantised alike
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        resized = np.stack([self.resize(img) for img in u8])  # (B,299,299,3) float32 in [0,255]
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous().to(self.device)
        return self.model(x).double().cpu().numpy()


class DigitsClassifierFeatures:
    """Penultimate features of the committed digits classifier (1x16x16 images only)."""

    def __init__(self, device="cpu"):
        from .digits_features import BUILTIN, DigitsFeatures, _sha256

        self._f = DigitsFeatures(device=device)
        self.name = DigitsFeatures.name
        self.fingerprint = _sha256(BUILTIN / "model.safetensors")

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if tuple(images.shape[1:]) != (1, 16, 16):
            raise DkdmError(f"the digits feature extractor needs 1x16x16 images, got {tuple(images.shape[1:])}; "
                            f"use --features inception")
        return self._f(images)


def load_extractor(spec: str, shape: tuple[int, int, int], inception: str | None = None, device="cpu"):
    """'auto' (digits for 1x16x16, else inception) | 'digits' | 'inception' | 'package.module:factory'."""
    if spec == "auto":
        spec = "digits" if tuple(shape) == (1, 16, 16) else "inception"
    if spec == "digits":
        return DigitsClassifierFeatures(device="cpu")
    if spec == "inception":
        return InceptionFeatures(inception, device=device)
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise DkdmError(f"feature extractor {spec!r} not importable: {exc}") from exc
        ext = factory(device=device)
        for a in ("name", "fingerprint"):
            if not hasattr(ext, a):
                raise DkdmError(f"feature extractor {spec!r} lacks the attribute {a!r}")
        return ext
    raise DkdmError(f"unknown feature extractor {spec!r}: use auto, digits, inception or package.module:factory")


def extract(extractor, images: torch.Tensor, desc: str, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Features of many images in batches, with a progress bar."""
    bar = tqdm(total=len(images), desc=f"features {desc}", disable=not progress, unit="img")
    out = []
    for i in range(0, len(images), batch_size):
        out.append(np.asarray(extractor(images[i:i + batch_size]), dtype=np.float64))
        bar.update(len(out[-1]))
    bar.close()
    if not out:
        raise DkdmError(f"no images to extract features from ({desc})")
    return np.concatenate(out)
