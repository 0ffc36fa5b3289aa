"""Optional parts of dkdm and the pip extra that brings each: a command whose extra is missing says so in one line."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DkdmError

# top-level module -> extra in pyproject's [project.optional-dependencies]
EXTRAS = {"starlette": "serve", "uvicorn": "serve", "prometheus_client": "serve", "httpx": "serve",
          "s3fs": "s3", "cleanfid": "fid", "pynvml": "gpu", "tensorboard": "tensorboard"}


def install_hint(module: str, what: str = "") -> str:
    top = module.split(".")[0]
    extra = EXTRAS[top]
    line = f"pip install 'dkdm[{extra}]'"
    if extra == "fid":  # its torchvision requirement has no CPU build for our torch (docs/development.md)
        line = "pip install --no-deps clean-fid (CPU; with a CUDA torchvision: pip install 'dkdm[fid]')"
    return f"{what or top} needs the [{extra}] extra ({top} is not installed): {line}"


def missing_extra(exc: BaseException) -> str | None:
    """The one-line hint for an ImportError of an optional module, else None (a missing core module is a bug)."""
    name = getattr(exc, "name", None) or ""
    return install_hint(name) if isinstance(exc, ImportError) and name.split(".")[0] in EXTRAS else None


def require(module: str, what: str = "") -> ModuleType:
    """Import an optional module, or raise DkdmError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if missing_extra(exc) is None:
            raise
        raise DkdmError(install_hint(exc.name, what)) from None
