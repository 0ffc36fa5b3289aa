"""Reference statistics for FID/KID: real images (digits, a folder, a webdataset), a precomputed .npz, or the teacher.

Statistics of real images are computed once per (images, extractor) and cached as .npz under the cache root
(`CACHE_ROOT/reference-stats/`), read back with allow_pickle=False.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DkdmError
from ..runtime import atomic_write_bytes
from . import metrics
from .features import extract

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Reference:
    name: str  # what the reference is, for the report
    kind: str  # digits | folder | wds | npz | teacher
    mu: np.ndarray
    sigma: np.ndarray
    feats: np.ndarray | None  # None for stats-only .npz: KID needs features
    n: int
    cached: str | None = None  # the .npz the statistics were read from or written to

    def fid(self, feats: np.ndarray) -> float:
        return metrics.frechet_distance(*metrics.stats(feats), self.mu, self.sigma)

    def kid(self, feats: np.ndarray) -> float | None:
        return None if self.feats is None else metrics.kid(feats, self.feats)


def kind_of(spec: str) -> str:
    if spec in ("digits", "teacher"):
        return spec
    if spec.endswith(".npz"):
        return "npz"
    if spec.endswith(".tar") or "{" in spec or "://" in spec:
        return "wds"
    if Path(spec).is_dir():
        return "folder"
    raise DkdmError(f"reference {spec!r} not found: give digits, teacher, a folder of images, webdataset shards "
                    f"(.tar, brace pattern or URL) or a statistics .npz")


def _to_tensor(img: Image.Image, shape) -> torch.Tensor:
    c, h, w = shape
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32).reshape(h, w, c)
    return torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1


def load_folder(folder: str, shape, limit: int = 0) -> tuple[torch.Tensor, str]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXT)
    if limit:
        files = files[:limit]
    if not files:
        raise DkdmError(f"reference folder {folder} holds no images ({', '.join(IMAGE_EXT)})")
    ident = hashlib.sha256("\n".join(f"{p.relative_to(folder)}|{p.stat().st_size}|{p.stat().st_mtime_ns}"
                                     for p in files).encode()).hexdigest()
    with torch.no_grad():
        return torch.stack([_to_tensor(Image.open(p), shape) for p in files]), ident


def load_wds(url: str, shape, limit: int = 0) -> tuple[torch.Tensor, str]:
    import webdataset as wds

    out = []
    try:
        for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            key = next((k for k in sample if k.lower().lstrip(".").split(".")[-1] in [e[1:] for e in IMAGE_EXT]), None)
            if key is None:
                continue
            out.append(_to_tensor(Image.open(io.BytesIO(sample[key])), shape))
            if limit and len(out) >= limit:
                break
    except (OSError, ValueError) as exc:
        raise DkdmError(f"could not read webdataset reference {url}: {exc}") from exc
    if not out:
        raise DkdmError(f"webdataset reference {url} holds no images")
    files = sorted(glob.glob(url)) if "://" not in url and "{" not in url else [url]
    ident = hashlib.sha256(("|".join(files) + f"|{len(out)}|" + "|".join(str(Path(f).stat().st_size) for f in files
                                                                          if Path(f).is_file())).encode()).hexdigest()
    return torch.stack(out), ident


def load_npz(path: str) -> Reference:
    if not Path(path).is_file():
        raise DkdmError(f"reference statistics {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise DkdmError(f"{path} lacks 'mu' and 'sigma' arrays (reference statistics)")
            feats = z["feats"].astype(np.float64) if "feats" in z else None
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
            return Reference(name=meta.get("name", f"statistics {path}"), kind="npz", mu=z["mu"].astype(np.float64),
                             sigma=z["sigma"].astype(np.float64), feats=feats, n=int(meta.get("n", 0)), cached=str(path))
    except (ValueError, OSError) as exc:
        raise DkdmError(f"{path} is not a readable .npz of statistics: {exc}") from exc


def save_npz(ref: Reference, path: Path, extractor_name: str) -> None:
    buf = io.BytesIO()
    meta = json.dumps({"name": ref.name, "kind": ref.kind, "n": ref.n, "extractor": extractor_name})
    arrays = {"mu": ref.mu, "sigma": ref.sigma, "meta": np.array(meta)}
    if ref.feats is not None:
        arrays["feats"] = ref.feats.astype(np.float32)
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def real_reference(spec: str, extractor, shape, cache_root: str, limit: int = 0, progress: bool = True) -> Reference:
    """Statistics of real images, from the cache when the same images were seen by the same extractor before."""
    kind = kind_of(spec)
    if kind == "npz":
        return load_npz(spec)
    if kind == "digits":
        from ..data.digits import load_digits_images
        import sklearn

        images, ident, name = None, f"sklearn-digits-{sklearn.__version__}-{limit}", "sklearn digits (1,797 real images, 16x16)"
    elif kind == "folder":
        images, ident = load_folder(spec, shape, limit)
        name = f"folder {spec} ({len(images)} images)"
    elif kind == "wds":
        images, ident = load_wds(spec, shape, limit)
        name = f"webdataset {spec} ({len(images)} images)"
    else:
        raise DkdmError(f"{spec!r} is not a real-image reference")
    key = hashlib.sha256(json.dumps([kind, ident, list(shape), extractor.fingerprint, extractor.name]).encode()).hexdigest()[:24]
    path = Path(cache_root) / "reference-stats" / f"{kind}-{key}.npz"
    if path.is_file():
        ref = load_npz(str(path))
        ref.kind = kind
        return ref
    if images is None:
        images = load_digits_images(shape[-1])[0]
        if limit:
            images = images[:limit]
    feats = extract(extractor, images, "reference", progress=progress)
    mu, sigma = metrics.stats(feats)
    ref = Reference(name=name, kind=kind, mu=mu, sigma=sigma, feats=feats, n=len(feats), cached=str(path))
    save_npz(ref, path, extractor.name)
    return ref


def teacher_reference(feats: np.ndarray, seeds: range) -> Reference:
    """The data-free case: the teacher's own samples (seeds disjoint from the evaluated ones) are the reference."""
    mu, sigma = metrics.stats(feats)
    return Reference(name=f"teacher samples, seeds {seeds.start}..{seeds.stop - 1}", kind="teacher", mu=mu,
                     sigma=sigma, feats=feats, n=len(feats))
