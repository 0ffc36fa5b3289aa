"""Process-wide settings shared by every command: threads, device, seeding, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import DkdmError


def pick_device(device: str = "auto") -> torch.device:
    """Resolve 'auto' to cuda when present, else cpu; refuse a device that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DkdmError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DkdmError(f"device {device!r} asked for but no CUDA GPU is visible; use --device cpu")
    return dev


_UMASK = os.umask(0)
os.umask(_UMASK)


def chmod_default(path: str | Path, executable: bool = False) -> None:
    """The mode a plain open() would have given under the user's umask (mkstemp and some writers use 0600)."""
    os.chmod(path, (0o777 if executable else 0o666) & ~_UMASK)


def chmod_tree(root: str | Path) -> None:
    """chmod_default over a folder written by a library that makes 0600 files (checkpoints, exports)."""
    for p in Path(root).rglob("*"):
        if not p.is_symlink():
            chmod_default(p, executable=p.is_dir())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via temp file + rename so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        chmod_default(tmp)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def positive(name: str, value: int | float) -> None:
    """Sizes users pass must be > 0: say which one is not."""
    if value is None or value <= 0:
        raise DkdmError(f"{name} must be a positive number, got {value}")


def launcher_world() -> int:
    """The number of processes a launcher (accelerate launch, torchrun, mpirun) says it started."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        v = os.environ.get(name, "")
        if v.strip().isdigit():
            return int(v)
    return 1


def check_world(seen: int, command: str) -> None:
    """Refuse a launched process that sees a world of 1: every process would act as rank 0 and they would
    write the same files (accelerate's PartialState(cpu=False) does that on a host without a GPU)."""
    want = launcher_world()
    if want > 1 and seen == 1:
        if command == "evaluate":
            raise DkdmError(f"dkdm evaluate runs in one process, but a launcher started {want} (WORLD_SIZE={want}): run it without one")
        raise DkdmError(f"dkdm {command}: the launcher started {want} processes (WORLD_SIZE={want}) but this one sees a world "
                        "of 1; on a CPU host use --device cpu or ACCELERATE_USE_CPU=true")


def use_cpu(device: str) -> bool:
    """Resolve --device before accelerate's state is made: PartialState(cpu=False) on a host without a GPU gives
    every launched process a world of 1 (STACK-NOTES), so 'auto' must already mean cpu there."""
    return pick_device(device).type == "cpu"


def distributed_state(device: str, command: str):
    """accelerate's PartialState for a multi-process command (generate), `device` resolved first, the world checked."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu(device))
    check_world(state.num_processes, command)
    return state


def accelerator(**kw):
    """An accelerate Accelerator for this run. accelerate keeps one process-wide state and refuses a second
    Accelerator with other settings (e.g. bf16 after fp32) in the same Python process, as in a notebook
    or a test session; dropping that state (not the distributed setup) lets each run choose its own."""
    from accelerate import Accelerator

    from .compat import reset_accelerator_state

    reset_accelerator_state()
    return Accelerator(**kw)

