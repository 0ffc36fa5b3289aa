"""Real images for mixing into distillation (`--real`, `--real-ratio`): the ordinary diffusion loss."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DkdmError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _to_tensor(img: Image.Image, channels: int, size: int) -> torch.Tensor:
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)


def _from_folder(path: Path, channels: int, size: int) -> list[torch.Tensor]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for f in files:
        try:
            with Image.open(f) as img:
                out.append(_to_tensor(img, channels, size))
        except OSError as exc:
            raise DkdmError(f"--real: {f} is not a readable image ({exc})") from exc
    return out


def _from_webdataset(url: str, channels: int, size: int) -> list[torch.Tensor]:
    """Tar shards (a path, a brace pattern or an fsspec URL) whose samples hold a .png/.jpg member."""
    import webdataset as wds

    out = []
    try:
        for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            member = next((k for k in sample if k.lower().lstrip(".").split(".")[-1] in ("png", "jpg", "jpeg")), None)
            if member is None:
                continue
            with Image.open(io.BytesIO(sample[member])) as img:
                out.append(_to_tensor(img, channels, size))
    except (OSError, ValueError) as exc:
        raise DkdmError(f"--real {url}: cannot read it as a webdataset of images ({exc})") from exc
    return out


def load_real_images(spec: str, channels: int, size: int) -> torch.Tensor:
    """`digits` (scikit-learn's, offline), a folder of PNG/JPG, or a webdataset (.tar) of images; (N,C,S,S) in [-1,1]."""
    if spec == "digits":
        from ..data.digits import load_digits_images

        if channels != 1:
            raise DkdmError(f"--real digits are grey images; the teacher has {channels} channels")
        return load_digits_images(size)[0]
    p = Path(spec).expanduser()
    if p.is_dir():
        imgs = _from_folder(p, channels, size)
    elif ".tar" in spec or "://" in spec:
        imgs = _from_webdataset(spec, channels, size)
    else:
        raise DkdmError(f"--real {spec!r}: give 'digits', a folder of PNG/JPG images, or a webdataset .tar of images")
    if not imgs:
        raise DkdmError(f"--real {spec!r} holds no PNG/JPG images")
    return torch.stack(imgs)


class RealNoised:
    """Draws real images, noises them at a uniform training timestep: (x_t, t, eps), as in DDPM training."""

    def __init__(self, images: torch.Tensor, noise_sched, batch_size: int, seed: int, device="cpu"):
        self.images, self.sched, self.b, self.device = images, noise_sched, batch_size, device
        self.T = int(noise_sched.config.num_train_timesteps)
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self):
        idx = torch.randint(0, len(self.images), (self.b,), generator=self.gen)
        x0 = self.images[idx]
        noise = torch.randn(x0.shape, generator=self.gen)
        t = torch.randint(0, self.T, (self.b,), generator=self.gen)
        x_t = self.sched.add_noise(x0, noise, t)
        return x_t.to(self.device), t.to(self.device), noise.to(self.device)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
