"""`embeddings.zarr`: prompt embeddings computed once per unique prompt; records point at a row (`cond`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import zarr

from ..errors import DkdmError
from .store import Store
from .zarr_backend import zarr_store

ROOT = "embeddings.zarr"


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise DkdmError(f"prompts file {path} does not exist (one prompt per line)")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DkdmError(f"prompts file {path} holds no prompt (one prompt per line)")
    return prompts


def unique_rows(prompts: list[str]) -> tuple[list[str], list[int]]:
    """Unique prompts in first-appearance order, and each prompt's row among them."""
    rows: dict[str, int] = {}
    for p in prompts:
        rows.setdefault(p, len(rows))
    return list(rows), [rows[p] for p in prompts]


def content_sha256(emb: np.ndarray, mask: np.ndarray, uncond: np.ndarray, prompts: list[str]) -> str:
    h = hashlib.sha256()
    for a in (emb, mask, uncond):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(prompts).encode())
    return h.hexdigest()


class Conditioning:
    """Embeddings of the unique prompts (and of "" for classifier-free guidance), ready for the teacher."""

    def __init__(self, teacher, prompts: list[str], guidance_scale: float, uncond_row: bool = False):
        self.prompts = prompts
        self.unique, self.rows = unique_rows(prompts)
        if uncond_row and "" not in self.unique:  # "" gets a row: records of the unconditional branch point at it
            self.unique.append("")
        self.uncond_row = self.unique.index("") if uncond_row else None
        emb, mask = teacher.encode_prompts(self.unique)
        uncond, _ = teacher.encode_prompts([""])
        self.emb, self.mask, self.uncond = emb, mask, uncond[0]
        self.guidance_scale = float(guidance_scale)
        self.sha256 = content_sha256(emb.numpy(), mask.numpy().astype(np.int64), self.uncond.numpy(), self.unique)

    def row_of(self, traj: int) -> int:
        """Trajectory i is conditioned on prompt i mod n_prompts."""
        return self.rows[traj % len(self.rows)]

    def describe(self) -> dict:
        return {"path": ROOT, "rows": len(self.unique), "seq": int(self.emb.shape[1]), "dim": int(self.emb.shape[2]),
                "dtype": "float32", "sha256": self.sha256}

    def model(self, teacher, rows: np.ndarray, device):
        """model(x, t) for `sample`: the teacher on these rows' embeddings, with classifier-free guidance."""
        cond = self.emb[torch.as_tensor(rows)].to(device)
        g = self.guidance_scale

        def f(x, t):
            if g == 1.0:
                return teacher(x, t, cond)
            unc = self.uncond.to(device).expand_as(cond)
            t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.dim() > 0 else t  # per-sample t (coverage offsets)
            out_u, out_c = teacher(torch.cat([x, x]), t2, torch.cat([unc, cond])).chunk(2)
            return out_u + g * (out_c - out_u)  # Ho & Salimans 2022, eq. 6

        return f

    def write(self, store: Store) -> None:
        """Write the arrays (idempotent: same prompts and teacher give the same bytes)."""
        group = zarr.open_group(zarr_store(store, ROOT), mode="a", zarr_format=3)
        arrays = {"emb": self.emb.numpy(), "mask": self.mask.numpy().astype(np.int64), "uncond": self.uncond.numpy()}
        for name, a in arrays.items():
            arr = group.create_array(name, shape=a.shape, chunks=a.shape, dtype=a.dtype, overwrite=True)
            arr[...] = a
        p = group.create_array("prompt", shape=(len(self.unique),), dtype=str, overwrite=True)
        p[...] = np.array(self.unique, dtype=object)
        group.attrs.update({"sha256": self.sha256, "rule": "record.cond = row of prompt[traj % n_prompts]"})


def read_embeddings(store: Store, expect: dict | None = None) -> dict:
    """emb, mask, uncond tensors and prompt texts, checked against the hash the manifest recorded; with
    `expect` (the manifest's `embeddings`) the declared shapes are checked before any array is read."""
    try:
        group = zarr.open_group(zarr_store(store, ROOT), mode="r", zarr_format=3)
        if expect is not None:
            rows, seq, dim = expect["rows"], expect["seq"], expect["dim"]
            want = {"emb": (rows, seq, dim), "mask": (rows, seq), "uncond": (seq, dim), "prompt": (rows,)}
            got = {k: tuple(group[k].shape) for k in want}
            if got != want:
                raise DkdmError(f"{store.url}/{ROOT} declares shapes {got}, the manifest says {want}; refusing")
        emb, mask, uncond = group["emb"][...], group["mask"][...], group["uncond"][...]
        # the content hash covers bytes, not dtype: a float32 -> int32 flip would keep it
        if (emb.dtype, mask.dtype, uncond.dtype) != (np.float32, np.int64, np.float32):
            raise DkdmError(f"{store.url}/{ROOT} holds emb/mask/uncond of dtypes {emb.dtype}/{mask.dtype}/{uncond.dtype}, "
                            "not float32/int64/float32; refusing")
        prompts = [str(p) for p in group["prompt"][...]]
        want = group.attrs["sha256"]
    except DkdmError:
        raise
    except Exception as exc:
        raise DkdmError(f"{store.url}/{ROOT} cannot be read ({type(exc).__name__}: {exc})") from exc
    if content_sha256(emb, mask, uncond, prompts) != want:
        raise DkdmError(f"{store.url}/{ROOT} does not match its recorded sha256 (corrupt or tampered)")
    return {"emb": torch.from_numpy(emb), "mask": torch.from_numpy(mask), "uncond": torch.from_numpy(uncond),
            "prompts": prompts, "sha256": want}
