"""Table + plot of the DKDM ablation (scripts/ablation-digits.sh) from its evaluate report and logs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ..runtime import atomic_write_bytes

RUNS = {
    "baseline": "data-based baseline (`--real-ratio 1`)",
    "cache-only": "data-free, from the cache (shuffle buffer)",
    "iterative": "live teacher, iterative pool",
    "shuffled": "live teacher, shuffled pool",
    "dynamic": "live teacher, dynamic pool (ρ=0.4)",
}


def _log(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


def collect(out: Path) -> dict:
    report = json.loads((out / "eval" / "report.json").read_text())
    rows = {}
    for name, label in RUNS.items():
        if name not in report["students"]:
            continue
        card = json.loads((out / name / "student" / "dkdm_student.json").read_text())
        rows[name] = {"label": label, **report["students"][name], "summary": card["summary"], "log": _log(out / name / "distill_log.csv")}
    return {"report": report, "rows": rows}


def render(data: dict, png_name: str) -> str:
    rep, rows = data["report"], data["rows"]
    t = rep["teacher"]
    any_row = next(iter(rows.values()))
    lines = [
        "# DKDM ablation on digits",
        "",
        f"Equal student steps: {int(any_row['summary']['steps'])} steps of batch 64, student UNet (16,32,32) "
        f"({any_row['params']:,} params) vs the builtin digits teacher ({t['params']:,} params). "
        f"Evaluation: {rep['sampler']['class']}-{rep['sampler']['steps']} ({rep['sampler']['timestep_spacing']}), "
        f"{rep['num_samples']} samples with seeds {rep['seeds'][0]}..{rep['seeds'][1]} for every model, FID/KID in the "
        f"digits-classifier feature space against all 1,797 real digits. Machine: {rep['machine']['platform']}, "
        f"{rep['date']}.",
        "",
        "| run | FID ↓ | KID ↓ | final loss | teacher forwards | distill wall s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher (reference) | {t['fid']:.2f} | {t['kid']:.4f} | – | – | – |",
    ]
    for name, r in rows.items():
        s = r["summary"]
        lines.append(f"| {r['label']} | {r['fid']:.2f} | {r['kid']:.4f} | {s['final_loss']:.4f} | "
                     f"{int(s.get('teacher_forwards', 0)):,} | {s['seconds']:.0f} |")
    lines += ["", f"![FID per run and loss curves]({png_name})", ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    from ..figures import plt, save_figure

    rows = data["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rows)
    a.bar(names, [rows[n]["fid"] for n in names], color="tab:blue")
    a.axhline(data["report"]["teacher"]["fid"], color="k", ls="--", label="teacher")
    a.set_ylabel("FID (digits features) ↓")
    a.set_title("FID at equal student steps")
    a.legend()
    for n in names:
        log = rows[n]["log"]
        b.plot([r["step"] for r in log], [r["loss"] for r in log], label=n)
    b.set_yscale("log")
    b.set_xlabel("step")
    b.set_ylabel("training loss (eps MSE)")
    b.set_title("loss (baseline: vs true noise; others: vs teacher)")
    b.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--md", default="docs/ablation.md")
    ap.add_argument("--png", default="docs/ablation.png")
    a = ap.parse_args(argv)
    data = collect(Path(a.out))
    plot(data, Path(a.png))
    md = render(data, Path(a.png).name)
    atomic_write_bytes(a.md, (md + kept_prose(Path(a.md))).encode())
    print(md)


def kept_prose(md: Path) -> str:
    """What people wrote below the generated table and plot (the analysis): a re-run replaces only the numbers."""
    if not md.is_file():
        return ""
    text = md.read_text()
    marker = text.find("![FID per run")
    if marker < 0:
        return ""
    rest = text[marker:].split("\n", 1)
    return "\n" + rest[1].lstrip("\n") if len(rest) > 1 and rest[1].strip() else ""


if __name__ == "__main__":
    sys.exit(main())
