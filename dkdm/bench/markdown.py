"""docs/benchmarks.md holds one section per `dkdm bench` stage; each run replaces only its own section."""

from __future__ import annotations

import re
from pathlib import Path

from ..runtime import atomic_write_bytes


def replace_section(md: str | Path, heading: str, section: str) -> None:
    """Replace (or append) the section under `heading`; the rest of the file is left as it is."""
    path = Path(md)
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    pat = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pat.sub(lambda _: section, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section
    atomic_write_bytes(path, text.encode())
