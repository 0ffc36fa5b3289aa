"""Checkpoints for exact resume: accelerate `save_state` (model, optimizer, RNG) plus our own state
(EMA, LR schedule, data positions) as safetensors + JSON, so resuming never unpickles anything.

Layout: OUT/checkpoints/step-00001200/ (written as .tmp-step-... and renamed when complete).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import DkdmError
from ..runtime import atomic_write_json, chmod_tree
from .checkpoint_check import check_parts, refuse

NAME = re.compile(r"^step-(\d{8})$")


def checkpoints(out: str | Path) -> list[Path]:
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and NAME.match(p.name))


def resolve_resume(out: str | Path, resume: str) -> Path | None:
    """'' -> no resume; 'latest' -> newest complete checkpoint (None if there is none yet); else a folder."""
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints(out)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "trainer_state.json").is_file():
        raise DkdmError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json); use 'latest' or OUT/checkpoints/step-N")
    return p


def save_tensors(path: Path, state: dict) -> None:
    """A flat dict of tensors (ints become 0-d tensors) as safetensors."""
    flat = {k: (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous() for k, v in state.items()}
    save_file(flat, str(path))


def load_tensors(path: Path) -> dict:
    return load_file(str(path))


def ema_state(ema) -> tuple[dict, dict]:
    sd = ema.state_dict()
    tensors = {f"shadow.{i}": p for i, p in enumerate(sd.pop("shadow_params"))}
    return tensors, sd


def load_ema(ema, tensors: dict, meta: dict) -> None:
    shadow = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
    ema.load_state_dict({**meta, "shadow_params": shadow})


def save(acc, folder: Path, step: int, ema, lr_sched, sources: dict, trainer_state: dict) -> None:
    """Every rank calls this; rank 0 renames the finished folder into place."""
    tmp = folder.parent / f".tmp-{folder.name}"
    if acc.is_main_process:  # half-written checkpoints of a killed run (kill -9) are never resumed: drop them
        for stale in folder.parent.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    rank = acc.process_index
    for name, src in sources.items():  # per-rank: each rank has its own stream / pool / generator
        save_tensors(tmp / f"data_{name}_{rank}.safetensors", src.state_dict())
    if acc.is_main_process:
        tensors, meta = ema_state(ema)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "ema.safetensors"))
        atomic_write_json(tmp / "ema.json", meta)
        atomic_write_json(tmp / "lr_scheduler.json", lr_sched.state_dict())
        atomic_write_json(tmp / "trainer_state.json", {**trainer_state, "step": step})
    acc.wait_for_everyone()
    if acc.is_main_process:
        chmod_tree(tmp)  # safetensors and torch.save make 0600 files whatever the umask
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    acc.wait_for_everyone()


def read_state(folder: Path) -> dict:
    """trainer_state.json, typed: a hand-edited or damaged state is refused in one line."""
    f = Path(folder) / "trainer_state.json"
    try:
        if f.stat().st_size > 16 << 20:
            raise ValueError("larger than 16 MB")
        state = json.loads(f.read_bytes())
        ok = isinstance(state, dict) and isinstance(state.get("config"), dict) and all(
            isinstance(state.get(k), int) and not isinstance(state.get(k), bool) for k in ("step", "world", "records_seen"))
    except (OSError, ValueError) as exc:
        raise DkdmError(f"checkpoint {folder}: trainer_state.json cannot be read ({exc})") from None
    if not ok or state["step"] < 0 or state["world"] < 1 or state["records_seen"] < 0:
        raise DkdmError(f"checkpoint {folder}: trainer_state.json is damaged (step, world and records_seen must be "
                        "non-negative integers); resume from another checkpoint")
    return state


def load(acc, folder: Path, ema, lr_sched, sources: dict, opt=None, batches_per_step: int = 1) -> dict:
    """Resume from `folder`: every part is checked first (checkpoint_check), then loaded; refusals name the file."""
    state = read_state(folder)
    if opt is not None:
        ema_tensors, ema_meta, lr_state = check_parts(folder, acc.process_index, opt, lr_sched, ema)
    try:
        acc.load_state(str(folder))
        if opt is None:
            ema_tensors = load_tensors(folder / "ema.safetensors")
            ema_meta = json.loads((folder / "ema.json").read_text())
            lr_state = json.loads((folder / "lr_scheduler.json").read_text())
    except Exception as exc:  # truncated safetensors, refused pickles, missing files: many exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DkdmError(f"checkpoint {folder} cannot be loaded ({type(exc).__name__}: {first}); "
                        "resume from another checkpoint") from None
    for name, src in sources.items():
        f = folder / f"data_{name}_{acc.process_index}.safetensors"
        if not f.is_file():
            raise DkdmError(f"checkpoint {folder} has no data position for source {name!r} on rank {acc.process_index}; "
                            "resume with the same sources and number of processes")
        try:
            src.load_state_dict(load_tensors(f))
        except DkdmError as exc:
            raise refuse(f, f"does not fit this run ({exc})") from None
        except Exception as exc:  # missing keys, wrong shapes or dtypes, a forged generator state
            raise refuse(f, f"is not a data position of this run ({type(exc).__name__})") from None
        consumed = getattr(src, "consumed", None)
        if consumed is not None and consumed != state["step"] * batches_per_step:
            raise refuse(f, f"says {consumed} batches were read, not the {state['step'] * batches_per_step} of step {state['step']}")
    for k, v in ema_tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise DkdmError(f"checkpoint {folder}: ema.safetensors holds NaN/Inf ({k}); resume from an earlier checkpoint")
    try:
        load_ema(ema, {k: v.to(acc.device) for k, v in ema_tensors.items()}, ema_meta)
        lr_sched.load_state_dict(lr_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DkdmError(f"checkpoint {folder} does not fit this run ({type(exc).__name__}: {str(exc)[:120]})") from None
    return state


def prune(out: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    found = checkpoints(out)
    gone = found[:-keep] if keep > 0 else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone
