"""docs/coverage.{json,png} + a markdown table: grid vs offsets students over several samplers
(scripts/coverage-digits.sh), from the sweep points of its `dkdm evaluate` reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..runtime import atomic_write_json

MODELS = {"teacher": "teacher", "student-grid": "grid (25 timesteps)", "student-offsets": "offsets (all 1000)"}


def collect(out: Path) -> dict:
    points, students, main = [], {}, None
    for rep_path in sorted(out.glob("eval-*/report.json")):
        rep = json.loads(rep_path.read_text())
        points += [{**p, "report": rep_path.parent.name} for p in rep["sweep"]["points"]]
        if rep_path.parent.name == "eval-ddim":  # the main setting (the distilled one): speed and KID floor
            s = rep["sampler"]
            points += [{"model": n, "scheduler": s["scheduler"], "steps": s["steps"], "n": rep["num_samples"],
                        "fid": r["fid"], "kid": r["kid"], "report": "eval-ddim (main)"}
                       for n, r in [("teacher", rep["teacher"]), *rep["students"].items()]]
            main = {"sampler": rep["sampler"], "num_samples": rep["num_samples"], "teacher": _pick(rep["teacher"]),
                    "students": {n: _pick(s) for n, s in rep["students"].items()}, "speedups": rep["speedups"],
                    "machine": rep["machine"], "date": rep["date"]}
    for name in MODELS:
        card = out / name / "student" / "dkdm_student.json"
        if card.exists():
            c = json.loads(card.read_text())
            students[name] = {"summary": c["summary"], "coverage": c["sampler"].get("coverage"),
                              "covered_timesteps": len(c["sampler"].get("covered_timesteps", [])),
                              "cache_id": c["cache_id"]}
    return {"points": points, "main": main, "students": students}


def _pick(r: dict) -> dict:
    return {k: r[k] for k in ("fid", "kid", "params", "images_per_s") if k in r}


def table(data: dict) -> str:
    settings = sorted({(p["scheduler"], p["steps"]) for p in data["points"]})
    fid = {(p["model"], p["scheduler"], p["steps"]): p for p in data["points"]}
    head = "| sampler | " + " | ".join(MODELS.values()) + " | offsets / grid |"
    lines = [head, "|---|" + "---:|" * (len(MODELS) + 1)]
    for kind, steps in settings:
        row = [fid.get((m, kind, steps)) for m in MODELS]
        cells = [f"{p['fid']:.2f} ({1e3 * p['kid']:.1f})" if p else "–" for p in row]
        ratio = f"{row[2]['fid'] / row[1]['fid']:.2f}" if row[1] and row[2] else "–"
        lines.append(f"| {kind}-{steps} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    from ..figures import plt, save_figure

    settings = sorted({(p["scheduler"], p["steps"]) for p in data["points"]})
    labels = [f"{k}-{s}" for k, s in settings]
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.8 / len(MODELS)
    for i, (m, label) in enumerate(MODELS.items()):
        vals = [next((p["fid"] for p in data["points"] if (p["model"], p["scheduler"], p["steps"]) == (m, k, s)), 0)
                for k, s in settings]
        ax.bar([j + (i - 1) * w for j in range(len(settings))], vals, w, label=label)
    ax.set_xticks(range(len(settings)), labels)
    ax.set_ylabel("FID vs real digits (digits features) ↓")
    ax.set_title("Students distilled from DDIM-25 caches: grid vs offsets coverage")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    out, docs = Path(argv[0]), Path(argv[1] if len(argv) > 1 else "docs")
    data = collect(out)
    atomic_write_json(docs / "coverage.json", data)
    plot(data, docs / "coverage.png")
    print(table(data))


if __name__ == "__main__":
    main(sys.argv[1:])
