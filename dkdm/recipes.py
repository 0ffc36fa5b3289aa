"""Where the shipped recipes and prompt files live: the top-level `pipelines/` of a checkout, or the
`dkdm.pipelines` package of an installed wheel (pyproject maps one onto the other), read with importlib.resources."""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import DkdmError

CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "pipelines"
PREFIX = "pipelines/"  # how a recipe names a shipped file (prompts = "pipelines/digits-t2i-prompts.txt")


def recipes_dir() -> Traversable:
    """The checkout's folder is the source of truth when there is one (editable or PYTHONPATH runs); an
    installed wheel carries the same files as package data of `dkdm.pipelines`."""
    if CHECKOUT_DIR.is_dir():
        return CHECKOUT_DIR
    try:
        return importlib.resources.files("dkdm.pipelines")
    except ModuleNotFoundError:
        raise DkdmError("no shipped recipes found: this install of dkdm lacks dkdm.pipelines; pass a .toml path") from None


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in recipes_dir().iterdir() if p.name.endswith(".toml"))


def shipped(name: str) -> Path | None:
    """A shipped file by name, as a filesystem path (wheels install unzipped), or None."""
    p = recipes_dir().joinpath(name)
    return Path(str(p)) if p.is_file() else None


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe is a TOML path, or a bare name of a shipped recipe."""
    p = Path(recipe)
    if p.is_file():
        return p
    if p.suffix != ".toml" or str(recipe).startswith(PREFIX):
        found = shipped(p.name if p.suffix == ".toml" else f"{p.name}.toml")
        if found is not None:
            return found
    raise DkdmError(f"recipe {str(recipe)!r} not found (a .toml path, or a shipped name: {', '.join(recipe_names())})")


def resolve_data_file(path: str) -> str:
    """A recipe's `pipelines/NAME` file (prompts) works from any folder and from an installed wheel."""
    if path and not Path(path).exists() and path.startswith(PREFIX):
        found = shipped(path[len(PREFIX):])
        if found is not None:
            return str(found)
    return path
