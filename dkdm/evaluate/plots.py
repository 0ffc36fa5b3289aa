"""The report's PNGs (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..figures import save_figure  # noqa: E402

MARKERS = {"ddpm": "o", "ddim": "s", "dpm++": "^", "euler": "D", "lcm": "*"}
STYLES = {"ddpm": ":", "ddim": "-", "dpm++": "--", "euler": "-.", "lcm": "-"}


_save = save_figure


def _colors(models):
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def quality_vs_steps(points: list[dict], path: Path, quality: str = "fid") -> None:
    models = list(dict.fromkeys(p["model"] for p in points))
    col = _colors(models)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in models:
        for s in dict.fromkeys(p["scheduler"] for p in points):
            pts = sorted((p for p in points if p["model"] == m and p["scheduler"] == s), key=lambda p: p["steps"])
            if pts:
                ax.plot([p["steps"] for p in pts], [p[quality] for p in pts], STYLES.get(s, "-"), marker=MARKERS.get(s, "o"),
                        color=col[m], label=f"{m} · {s}")
    ax.set_xscale("log")
    ax.set_xticks(sorted({p["steps"] for p in points}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"{quality.upper()} ↓")
    ax.set_title("quality vs sampling steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def pareto(points: list[dict], front: list[dict], path: Path, cost: str, cost_label: str, target: float | None = None) -> None:
    models = list(dict.fromkeys(p["model"] for p in points))
    col = _colors(models)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in points:
        ax.scatter(p[cost], p["fid"], color=col[p["model"]], marker=MARKERS.get(p["scheduler"], "o"), s=28, alpha=0.8)
    ax.plot([p[cost] for p in front], [p["fid"] for p in front], "k-", lw=1, alpha=0.6, label="Pareto front")
    for p in front:
        ax.annotate(f"{p['model']} {p['scheduler']}-{p['steps']}", (p[cost], p["fid"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    if target:
        ax.axhline(target, color="grey", ls=":", lw=1, label=f"target FID {target:.1f}")
    for m in models:
        ax.scatter([], [], color=col[m], label=m)
    for s, mk in MARKERS.items():
        if any(p["scheduler"] == s for p in points):
            ax.scatter([], [], color="grey", marker=mk, label=s)
    ax.set_xscale("log")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("FID ↓")
    ax.set_title("quality vs cost: every (model, scheduler, steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def fewstep_front(teacher_points: list[dict], few: dict, path: Path, cost_label: str) -> None:
    """The teacher's every (scheduler, steps) in grey with its Pareto front, and each student at its own steps; when
    the crossing was confirmed on the main seeds, a second panel with the teacher's settings and the students there."""
    fr = few["front"]
    conf = fr.get("confirmed")
    fig, axes = plt.subplots(1, 2 if conf else 1, figsize=(12.4 if conf else 6.8, 4.4), squeeze=False)
    col = _colors(list(dict.fromkeys(r["model"] for r in few["rows"])))
    _front_panel(axes[0][0], teacher_points, fr["teacher_front"], few["rows"], col, "front_fid", "equal_fid",
                 f"the sweep's seeds (n = {fr['n']})", cost_label)
    if conf:
        pts = conf["points"]
        from .sweep import pareto_front

        _front_panel(axes[0][1], pts, pareto_front(pts), few["rows"], col, "fid", "equal_fid_n",
                     f"the main seeds (n = {conf['n']}): the teacher's settings scored again", cost_label)
    _save(fig, path)


def _front_panel(ax, teacher_points, front, rows_all, col, fid_key, eq_key, seeds_label, cost_label) -> None:
    for p in teacher_points:
        ax.scatter(p["seconds_per_image"], p["fid"], color="0.6", marker=MARKERS.get(p["scheduler"], "o"), s=22, alpha=0.7)
    ax.plot([p["seconds_per_image"] for p in front], [p["fid"] for p in front], "k-", lw=1, label="teacher's front")
    for s, mk in MARKERS.items():
        if any(p["scheduler"] == s for p in teacher_points):
            ax.scatter([], [], color="0.6", marker=mk, label=f"teacher · {s}")
    for m, c in col.items():
        rows = sorted((r for r in rows_all if r["model"] == m), key=lambda r: r["steps"])
        ax.plot([r["seconds_per_image"] for r in rows], [r[fid_key] for r in rows], "-", color=c, lw=1.2,
                marker=MARKERS.get(rows[0]["scheduler"], "o"), ms=9, label=f"{m} · {rows[0]['scheduler']} (own)")
        for r in rows:
            eq = r.get(eq_key)
            txt = f"{r['steps']}" + (f" ({eq['speedup']:.2g}x)" if eq else "")
            ax.annotate(txt, (r["seconds_per_image"], r[fid_key]), fontsize=7, xytext=(4, 4), textcoords="offset points",
                        color=c)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.get_yaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_yaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(cost_label)
    ax.set_ylabel("FID ↓")
    ax.set_title(f"students at their own steps vs the teacher, on {seeds_label}\n(label: steps, speed-up at equal FID)",
                 fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)


def embedding(emb: dict, key: str, path: Path, title: str) -> None:
    labels = np.array(emb["labels"])
    xy = np.asarray(emb[key])
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    col = _colors(list(dict.fromkeys(emb["labels"])))
    for name in dict.fromkeys(emb["labels"]):
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.6, color=col[name], label=f"{name} ({sel.sum()})")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2)
    _save(fig, path)


def paired_hist(per_student: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    allv = np.concatenate([np.asarray(v) for v in per_student.values()])
    bins = np.linspace(0, max(float(allv.max()), 1e-6), 40)
    for name, v in per_student.items():
        ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (mean {np.mean(v):.3f})")
    ax.set_xlabel("per-seed pixel RMSE to the teacher's image (same noise, images in [-1, 1])")
    ax.set_ylabel("seeds")
    ax.set_title("paired fidelity to the teacher")
    ax.legend(fontsize=7)
    _save(fig, path)
