"""The CLI's error policy, one place for every command: errors users can fix are one line and exit 2."""

from __future__ import annotations

import functools
import os

import typer

from ..errors import DkdmError, Interrupted
from ..extras import missing_extra


def debugging() -> bool:
    return os.environ.get("DKDM_DEBUG", "") not in ("", "0")


def friendly(fn):
    """Users see one line and a non-zero exit for errors they can fix, never a traceback (DKDM_DEBUG=1 or
    --debug shows it). OS errors (a read-only --out, a full disk, a missing file) are the user's to fix too, and so
    is a missing optional extra; anything else is a bug of ours and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            typer.secho(f"interrupted by signal {exc.signum}", err=True)
            raise typer.Exit(128 + exc.signum)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(130)
        except (DkdmError, OSError, MemoryError, ImportError) as exc:
            if debugging() or (isinstance(exc, ImportError) and missing_extra(exc) is None):
                raise  # a missing core module is a broken install or a bug: keep its traceback
            typer.secho(f"error: {one_line(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)

    return wrapper


def one_line(exc: BaseException) -> str:
    if isinstance(exc, DkdmError):
        return " ".join(str(exc).split())
    if isinstance(exc, ImportError):
        return missing_extra(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller sizes (--batch-size, --trajectories)"
    if isinstance(exc, OSError) and exc.filename is not None:  # PermissionError, FileNotFoundError, ENOSPC...
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
