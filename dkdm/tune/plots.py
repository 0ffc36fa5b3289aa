"""Scatter plots of the trials: quality vs cost, adherence vs cost and bias vs cost, Pareto set and default marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..figures import save_figure  # noqa: E402

AXES = {"fid": "FID ↓", "adherence": "prompt adherence ↑", "bias": "bias: TV distance to uniform ↓"}
COST = {"seconds_per_image": "seconds per image (cost; no energy counter)", "joules_per_image": "joules per image"}


def _scatter(rows, front, y: str, cost_unit: str, path: Path) -> None:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    models = list(dict.fromkeys(r["setting"]["model"] for r in done))
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(models):
        for feas, mk in ((True, "o"), (False, "x")):
            pts = [r for r in done if r["setting"]["model"] == m and bool(r["feasible"]) == feas]
            if pts:
                ax.scatter([r["objectives"]["cost"] for r in pts], [r["objectives"][y] for r in pts], marker=mk, s=26,
                           color=cmap(i % 10), alpha=0.8, label=f"{m}{'' if feas else ' (infeasible)'}")
    pf = sorted(front, key=lambda r: r["objectives"]["cost"])
    ax.scatter([r["objectives"]["cost"] for r in pf], [r["objectives"][y] for r in pf], s=90, facecolors="none",
               edgecolors="k", label="Pareto set (all objectives)")
    for r in done:
        if r["default"]:
            ax.scatter([r["objectives"]["cost"]], [r["objectives"][y]], marker="*", s=220, color="gold", edgecolors="k",
                       label="default", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel(COST[cost_unit])
    ax.set_ylabel(AXES[y])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{AXES[y].split(':')[0].rstrip(' ↓↑')} vs cost, {len(done)} trials")
    save_figure(fig, path)


def scatters(rows, front, objectives: list[str], cost_unit: str, out: Path) -> dict:
    pngs = {}
    if not any(r["state"] == "COMPLETE" for r in rows):
        return pngs
    for y in ("fid", "adherence", "bias"):
        if y in objectives:
            name = f"tune_{y}_vs_cost.png"
            _scatter(rows, front, y, cost_unit, out / name)
            pngs[y] = name
    return pngs
