"""One way to write a matplotlib figure: Agg backend, PNG, atomic (a reader never sees half an image)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runtime import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: str | Path, tight: bool = True) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
