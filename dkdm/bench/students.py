"""Table + curves comparing student kinds (narrow vs blocks with inherited weights vs transformer) from evaluate
reports and the runs' distill logs: `python -m dkdm.bench.students RUNS_DIR OUT_PREFIX EVAL_DIR...` (docs/students.md).
Several reports may share the work (same teacher, seeds and sampler, so FID/KID agree); each student's speed-up is
taken against the teacher timed in its own report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..runtime import atomic_write_bytes, atomic_write_json
from .ablation import _log


def first_step_at(log: list[dict], level: float, window: int = 5) -> int | None:
    """First logged step where the running mean of eps-MSE over `window` log rows is at or below `level`."""
    vals = [r["eps_mse"] for r in log]
    for i in range(len(vals)):
        lo = max(0, i - window + 1)
        if sum(vals[lo:i + 1]) / (i + 1 - lo) <= level:
            return int(log[i]["step"])
    return None


def collect(runs: Path, evals: list[str]) -> dict:
    reports = [json.loads((runs / e / "report.json").read_text()) for e in evals]
    report = reports[0]
    rows = {}
    for rep, name, r in [(rep, n, r) for rep in reports for n, r in rep["students"].items()]:
        card = json.loads((runs / name / "student" / "dkdm_student.json").read_text())
        log = _log(runs / name / "distill_log.csv")
        rows[name] = {"student": card.get("student", {}), "summary": card["summary"], "log": log,
                      "feature_kd": card["config"]["feature_kd"], "report": rep["date"],
                      "speedup": r["images_per_s"] / rep["teacher"]["images_per_s"],
                      "teacher_fid_in_report": rep["teacher"]["fid"], **{k: r[k] for k in (
                          "fid", "kid", "fid_vs_teacher", "params", "flops_per_image", "images_per_s", "paired")}}
    final = {n: sum(r["eps_mse"] for r in row["log"][-5:]) / len(row["log"][-5:]) for n, row in rows.items()}
    if "narrow" in rows:
        for n, row in rows.items():
            row["steps_to_narrow_final_eps_mse"] = first_step_at(row["log"], final["narrow"])
    for n, row in rows.items():
        row["final_eps_mse"] = final[n]
    return {"report": report, "rows": rows}


def render(data: dict, png: str) -> str:
    rep, rows = data["report"], data["rows"]
    t = rep["teacher"]
    lines = ["| student | removed / kind | feature KD | params | GFLOPs/image | images/s | speed-up | FID ↓ | KID ↓ | "
             "FID vs teacher | paired RMSE (median) | final eps-MSE | step reaching narrow's final eps-MSE |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| teacher | – | – | {t['params']:,} | {t['flops_per_image'] / 1e9:.2f} | {t['images_per_s']:.1f} | 1.00x | "
             f"{t['fid']:.2f} | {t['kid']:.3f} | – | – | – | – |"]
    for n, r in rows.items():
        s = r["student"]
        kind = ", ".join(s.get("removed", [])) if s.get("kind") == "blocks" else s.get("kind", "narrow")
        reach = r.get("steps_to_narrow_final_eps_mse")
        lines.append(f"| {n} | {kind} | {r['feature_kd']:g} | {r['params']:,} | {r['flops_per_image'] / 1e9:.2f} | "
                     f"{r['images_per_s']:.1f} | {r['speedup']:.2f}x | {r['fid']:.2f} | "
                     f"{r['kid']:.3f} | {r['fid_vs_teacher']:.2f} | {r['paired']['pixel_rmse']['median']:.3f} | "
                     f"{r['final_eps_mse']:.4f} | {'not reached' if reach is None else reach} |")
    return "\n".join(lines) + f"\n\n![eps-MSE curves and FID]({png})\n"


def plot(data: dict, path: Path) -> None:
    from ..figures import plt, save_figure

    rows = data["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for n, r in rows.items():
        a.plot([x["step"] for x in r["log"]], [x["eps_mse"] for x in r["log"]], label=n, lw=1.2)
    if "narrow" in rows:
        a.axhline(rows["narrow"]["final_eps_mse"], color="gray", ls=":", lw=1, label="narrow's final eps-MSE")
    a.set_yscale("log")
    a.set_xlabel("distill step (batch 64)")
    a.set_ylabel("eps-MSE vs teacher target (training batches)")
    a.set_title("loss curves: inherited weights vs random init")
    a.legend(fontsize=8)
    names = list(rows)
    b.scatter([rows[n]["speedup"] for n in names], [rows[n]["fid"] for n in names])
    for n in names:
        b.annotate(f"{n} ({rows[n]['params'] / 1e3:.0f}k)", (rows[n]["speedup"], rows[n]["fid"]), fontsize=8)
    b.axhline(data["report"]["teacher"]["fid"], color="k", ls="--", label="teacher FID")
    b.set_xlabel("speed-up over the teacher (images/s ratio)")
    b.set_ylabel("FID (digits features) ↓")
    b.set_title("quality vs speed at equal steps")
    b.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def main(runs: str, prefix: str, *evals: str) -> None:
    data = collect(Path(runs), list(evals) or ["eval"])
    png = Path(prefix + ".png")
    plot(data, png)
    atomic_write_json(prefix + ".json", {"report_date": data["report"]["date"], "rows": {
        n: {k: v for k, v in r.items() if k != "log"} | {"log": [{"step": x["step"], "eps_mse": x["eps_mse"]} for x in r["log"]]}
        for n, r in data["rows"].items()}, "teacher": {k: data["report"]["teacher"][k] for k in ("fid", "kid", "params", "images_per_s", "flops_per_image")}})
    atomic_write_bytes(prefix + ".md", render(data, png.name).encode())
    print(render(data, png.name))


if __name__ == "__main__":
    main(*sys.argv[1:])
