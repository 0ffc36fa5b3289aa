"""One record = (x_t, t, target, traj, step, cond); how it is laid out as bytes, without pickles."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DkdmError

KEY_FORMAT = "{traj:010d}_{step:04d}"  # no dot: webdataset splits the key at the first dot
MEMBERS = ("x_t.npy", "target.npy", "meta.json")
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class RecordBatch:
    x_t: np.ndarray  # (N, C, H, W) storage dtype (bf16 stored as uint16 bits)
    target: np.ndarray
    t: np.ndarray  # (N,) int64
    traj: np.ndarray
    step: np.ndarray
    cond: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


def to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """numpy has no bfloat16: its bits travel as uint16 and the manifest says 'bfloat16'."""
    if dtype not in STORAGE_DTYPES:
        raise DkdmError(f"unsupported record dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
    y = x.detach().to("cpu", STORAGE_DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        return y.view(torch.uint16).numpy()
    return y.numpy()


def from_storage(arr: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.float()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DkdmError(f"{where}: not a plain numeric .npy member ({exc})") from exc


def encode(batch: RecordBatch, i: int) -> dict:
    meta = {"t": int(batch.t[i]), "traj": int(batch.traj[i]), "step": int(batch.step[i]), "cond": int(batch.cond[i])}
    return {
        "__key__": KEY_FORMAT.format(traj=meta["traj"], step=meta["step"]),
        "x_t.npy": npy_bytes(batch.x_t[i]),
        "target.npy": npy_bytes(batch.target[i]),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }


def check_members(sample: dict, where: str) -> None:
    """Only our three members may appear: a .pth/.pyd/.pickle member is refused, never decoded."""
    extra = [k for k in sample if not k.startswith("__") and k not in MEMBERS]
    if extra:
        raise DkdmError(f"{where}: record {sample.get('__key__')} has unexpected member(s) {extra}; refusing (caches never contain code or pickles)")
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise DkdmError(f"{where}: record {sample.get('__key__')} lacks {missing}")


def decode(sample: dict, where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    check_members(sample, where)
    meta = json.loads(sample["meta.json"])
    return load_npy(sample["x_t.npy"], where), load_npy(sample["target.npy"], where), meta
