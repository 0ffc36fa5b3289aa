"""Check every part of a checkpoint before a resume uses any of it.

accelerate's `load_state` swallows any error while loading the RNG states (it only logs "Could not load random
states"), so a pickled or damaged RNG file would resume with fresh RNG; and a scheduler or optimizer state of the
wrong structure fails later with a traceback. Each part is loaded here the way accelerate loads it
(`weights_only`), compared with the structure of the live object, and refused in one line naming the file.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from accelerate.utils.other import load as accelerate_load

from ..errors import DkdmError

MAX_JSON = 16 << 20


def refuse(path: Path, why: str) -> DkdmError:
    return DkdmError(f"checkpoint file {path} {why}; resume from another checkpoint")


def torch_file(path: Path):
    if not path.is_file():
        raise refuse(path, "is missing")
    try:
        return accelerate_load(str(path), map_location="cpu")  # weights_only=True, numpy arrays allowed
    except Exception as exc:  # pickle refusals and damaged files raise many types
        raise refuse(path, f"cannot be loaded safely ({type(exc).__name__})") from None


def json_file(path: Path):
    try:
        if path.stat().st_size > MAX_JSON:
            raise ValueError(f"larger than {MAX_JSON} bytes")
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise refuse(path, f"cannot be read as JSON ({type(exc).__name__})") from None


def check_rng(path: Path) -> None:
    """random_states_<rank>.pkl: Python, NumPy and torch RNG states that each RNG accepts (on scratch generators)."""
    states = torch_file(path)
    if not isinstance(states, dict) or not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(states):
        raise refuse(path, "is not an RNG state (random_state, numpy_random_seed, torch_manual_seed)")
    t = states["torch_manual_seed"]
    if not (torch.is_tensor(t) and t.dtype == torch.uint8 and t.shape == torch.get_rng_state().shape):
        raise refuse(path, "holds a torch RNG state of the wrong type or shape")
    try:
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(t)
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise refuse(path, f"holds an RNG state its generator refuses ({type(exc).__name__})") from None
    if "step" in states and not (isinstance(states["step"], int) and states["step"] >= 0):
        raise refuse(path, "holds a step that is not a non-negative integer")
    for k, v in states.items():
        if k.startswith("torch_") and k.endswith("_manual_seed") and k != "torch_manual_seed":
            if not (isinstance(v, (list, tuple)) and all(torch.is_tensor(x) and x.dtype == torch.uint8 for x in v)) \
                    and not (torch.is_tensor(v) and v.dtype == torch.uint8):
                raise refuse(path, f"holds a {k} that is not a list of byte tensors")


def check_optimizer(path: Path, opt) -> None:
    """optimizer.bin: the live optimizer's param groups, and per-parameter state tensors of the parameters' shapes."""
    saved, live = torch_file(path), opt.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"} or not isinstance(saved["state"], dict) \
            or not isinstance(saved["param_groups"], list) or len(saved["param_groups"]) != len(live["param_groups"]):
        raise refuse(path, "does not have the structure of this run's optimizer state")
    for g_saved, g_live in zip(saved["param_groups"], live["param_groups"]):
        if not isinstance(g_saved, dict) or set(g_saved) != set(g_live) or g_saved["params"] != g_live["params"]:
            raise refuse(path, "has param groups other than this run's optimizer")
    shapes = {i: p.shape for g, gl in zip(opt.param_groups, live["param_groups"]) for i, p in zip(gl["params"], g["params"])}
    for i, st in saved["state"].items():
        if i not in shapes or not isinstance(st, dict):
            raise refuse(path, f"holds state for parameter {i!r}, which this run's optimizer does not have")
        for k, v in st.items():
            if not torch.is_tensor(v) or (v.dim() > 0 and v.shape != shapes[i]) or not torch.isfinite(v).all():
                raise refuse(path, f"holds {k} of parameter {i} that is not a finite tensor of its shape")


def check_like(path: Path, saved, live: dict, what: str) -> None:
    """A JSON state (LR schedule, EMA settings) with the live state's keys and value types."""
    if not isinstance(saved, dict) or set(saved) != set(live):
        raise refuse(path, f"does not have the keys of this run's {what} state")
    for k, v in live.items():
        if not _same_kind(saved[k], v):
            raise refuse(path, f"holds {k}={str(saved[k])[:40]!r}, not a {type(v).__name__} like this run's {what}")


def _same_kind(a, b) -> bool:
    if isinstance(b, bool) or b is None:
        return a is b or (isinstance(a, bool) and isinstance(b, bool))
    if isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and (isinstance(b, float) or isinstance(a, int))
    if isinstance(b, (list, tuple)):
        return isinstance(a, list) and len(a) == len(b) and all(_same_kind(x, y) for x, y in zip(a, b))
    return type(a) is type(b)


def check_ema(path: Path, tensors: dict, ema) -> None:
    want = [p.shape for p in ema.shadow_params]
    names = [f"shadow.{i}" for i in range(len(want))]
    if sorted(tensors) != sorted(names) or any(tensors[n].shape != s for n, s in zip(names, want)):
        raise refuse(path, f"does not hold this student's {len(want)} EMA tensors of its shapes")


def check_parts(folder: Path, process_index: int, opt, lr_sched, ema) -> tuple[dict, dict, dict]:
    """Check RNG, optimizer, LR schedule and EMA files before accelerate loads them; returns (ema tensors, ema meta, lr)."""
    from safetensors.torch import load_file

    check_rng(folder / f"random_states_{process_index}.pkl")
    check_optimizer(folder / "optimizer.bin", opt)
    lr_state = json_file(folder / "lr_scheduler.json")
    check_like(folder / "lr_scheduler.json", lr_state, lr_sched.state_dict(), "LR schedule")
    meta = json_file(folder / "ema.json")
    live_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    check_like(folder / "ema.json", meta, live_meta, "EMA")
    f = folder / "ema.safetensors"
    try:
        tensors = load_file(str(f))
    except Exception as exc:  # safetensors raises its own error types for truncated or forged headers
        raise refuse(f, f"cannot be loaded ({type(exc).__name__})") from None
    check_ema(f, tensors, ema)
    return tensors, meta, lr_state
