"""Records and blocks: a record is (x_t, t, target, traj, step, cond); records are stored and read in
blocks (one teacher batch at one step), because per-record encoding and decoding was what made
writing the cache slow down the teacher and reading it stall the trainer."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DkdmError

KEY_FORMAT = "{traj:010d}_{step:04d}"  # first record of the block; no dot: webdataset splits keys at the first dot
MEMBERS = ("x_t.npy", "target.npy", "meta.json")
SCALARS = ("t", "traj", "step", "cond")
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class RecordBatch:
    """A block of records: arrays with the record axis first, in storage dtype (bf16 as uint16 bits)."""

    x_t: np.ndarray  # (N, C, H, W)
    target: np.ndarray
    t: np.ndarray  # (N,) int64
    traj: np.ndarray
    step: np.ndarray
    cond: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def record(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        return self.x_t[i], self.target[i], {k: int(getattr(self, k)[i]) for k in SCALARS}

    def torch(self, dtype: str) -> tuple[torch.Tensor, ...]:
        """(x_t, t, target, cond) as tensors sharing this block's memory; x_t/target stay in storage dtype."""
        return (storage_tensor(self.x_t, dtype), torch.from_numpy(self.t), storage_tensor(self.target, dtype),
                torch.from_numpy(self.cond))


def to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """numpy has no bfloat16: its bits travel as uint16 and the manifest says 'bfloat16'."""
    if dtype not in STORAGE_DTYPES:
        raise DkdmError(f"unsupported record dtype {dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
    y = x.detach().to("cpu", STORAGE_DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        return y.view(torch.uint16).numpy()
    return y.numpy()


def storage_tensor(arr: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def from_storage(arr: np.ndarray, dtype: str) -> torch.Tensor:
    return storage_tensor(arr, dtype).float()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, where: str, spec=None, member: str = "") -> np.ndarray:
    """A .npy member: its header (shape, dtype) is parsed and checked against `spec` before the array is read,
    and the declared size must equal the bytes present, so a forged header cannot make us allocate."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f, max_header_size=4096)
    except Exception as exc:  # numpy parses the header dict with ast: ValueError, SyntaxError, TokenError...
        raise DkdmError(f"{where}: {member or 'member'} is not a plain numeric .npy ({type(exc).__name__})") from None
    if dtype.hasobject or dtype.kind not in "fiub" or fortran:
        raise DkdmError(f"{where}: {member} has dtype {dtype} (fortran={fortran}); only plain numeric C-order arrays are read")
    if spec is not None:
        spec.check_array(shape, dtype, member)
    n = 1
    for d in shape:
        n *= int(d)
    if n * dtype.itemsize != len(data) - f.tell():
        raise DkdmError(f"{where}: {member} declares {tuple(shape)} {dtype} ({n * dtype.itemsize} bytes) "
                        f"but holds {len(data) - f.tell()}")
    return np.frombuffer(data, dtype=dtype, offset=f.tell()).reshape(shape).copy()


def encode(batch: RecordBatch) -> dict:
    """One tar sample per block: the arrays as two .npy members, the scalars as JSON lists."""
    meta = {k: getattr(batch, k).tolist() for k in SCALARS}
    return {
        "__key__": KEY_FORMAT.format(traj=int(batch.traj[0]), step=int(batch.step[0])),
        "x_t.npy": npy_bytes(batch.x_t),
        "target.npy": npy_bytes(batch.target),
        "meta.json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
    }


def check_members(sample: dict, where: str) -> None:
    """Only our three members may appear: a .pth/.pyd/.pickle member is refused, never decoded."""
    extra = [k for k in sample if not k.startswith("__") and k not in MEMBERS]
    if extra:
        raise DkdmError(f"{where}: sample {sample.get('__key__')} has unexpected member(s) {extra}; refusing (caches never contain code or pickles)")
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise DkdmError(f"{where}: sample {sample.get('__key__')} lacks {missing}")


def decode(sample: dict, where: str, spec=None) -> RecordBatch:
    check_members(sample, where)
    key = sample.get("__key__")
    try:
        meta = json.loads(sample["meta.json"])
        scalars = {k: np.asarray(meta[k], dtype=np.int64) for k in SCALARS}
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise DkdmError(f"{where}: sample {key} has a bad meta.json ({exc})") from exc
    if spec is not None and any(len(v) > spec.records for v in scalars.values()):
        raise DkdmError(f"{where}: sample {key} meta.json lists more rows than the shard's {spec.records} records")
    return check_block(RecordBatch(x_t=load_npy(sample["x_t.npy"], where, spec, "x_t"),
                                   target=load_npy(sample["target.npy"], where, spec, "target"), **scalars),
                       f"{where}: sample {key}")


def check_block(b: RecordBatch, where: str) -> RecordBatch:
    n = len(b.t)
    if b.t.ndim != 1 or any(getattr(b, k).shape != (n,) for k in SCALARS) or b.x_t.ndim != 4 or len(b.x_t) != n \
            or len(b.target) != n or b.target.ndim != 4:
        raise DkdmError(f"{where}: block arrays disagree in length or rank "
                        f"(x_t {b.x_t.shape}, target {b.target.shape}, t {b.t.shape})")
    if n and (b.t.min() < 0 or b.step.min() < 0):
        raise DkdmError(f"{where}: holds rows that were never written (t or step < 0)")
    return b


def concat(blocks: list[RecordBatch]) -> RecordBatch:
    return RecordBatch(**{k: np.concatenate([getattr(b, k) for b in blocks]) for k in ("x_t", "target", *SCALARS)})
