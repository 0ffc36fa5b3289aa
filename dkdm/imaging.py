"""Image grids as PNG, without torchvision."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .runtime import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,C,H,W) in [-1,1] -> (N,H,W,C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, ncol: int | None = None, pad: int = 1, scale: int = 1) -> Image.Image:
    """diffusers' make_image_grid over the images, each with a white `pad` line right and below, the whole framed;
    missing cells of the last row are white."""
    from diffusers.utils import make_image_grid

    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    tiles = [Image.fromarray(a[..., 0] if c == 1 else a) for a in arr]
    white = 255 if c == 1 else (255,) * c
    cells = [ImageOps.expand(t, border=(0, 0, pad, pad), fill=white) for t in tiles]
    cells += [Image.new(tiles[0].mode, (w + pad, h + pad), white)] * (nrow * ncol - n)
    img = ImageOps.expand(make_image_grid(cells, nrow, ncol), border=(pad, pad, 0, 0), fill=(255,) * 3)
    img = img.convert(tiles[0].mode)  # make_image_grid pastes onto RGB; grayscale stays grayscale
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(img: Image.Image, path: str | Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def side_by_side(panels: list[tuple[str, torch.Tensor]], ncol: int = 8, scale: int = 4) -> Image.Image:
    """Labelled grids next to each other: same seeds in the same cells."""
    from PIL import ImageDraw

    grids = [grid(x, ncol=ncol, scale=scale) for _, x in panels]
    label_h, gap = 14, 8
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    height = max(g.height for g in grids) + label_h
    out = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(out)
    x = 0
    for (name, _), g in zip(panels, grids):
        draw.text((x + 2, 1), name, fill=0)
        out.paste(g.convert("L"), (x, label_h))
        x += g.width + gap
    return out
