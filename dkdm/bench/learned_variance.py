"""docs/learned-variance.{json,png} + a markdown table (scripts/learned-variance-digits.sh): students of a
learned-variance teacher distilled with and without the KL term, their loss parts and FIDs per sampler."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from ..runtime import atomic_write_json

T_BANDS = ((0, 0), (1, 39), (40, 399), (400, 999))  # the KL is largest where the variance is smallest

MODELS = {"teacher": "teacher", "student-kl1": "student, KL weight 1", "student-kl0": "student, no KL"}


def _log(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


def collect(out: Path) -> dict:
    rep = json.loads((out / "eval" / "report.json").read_text())
    s = rep["sampler"]
    points = [{"model": n, "scheduler": s["scheduler"], "steps": s["steps"], "n": rep["num_samples"], "fid": r["fid"],
               "kid": r["kid"]} for n, r in [("teacher", rep["teacher"]), *rep["students"].items()]]
    points += [{k: p[k] for k in ("model", "scheduler", "steps", "n", "fid", "kid")} for p in rep["sweep"]["points"]]
    logs = {n: _log(out / n / "distill_log.csv") for n in MODELS if (out / n / "distill_log.csv").exists()}
    teacher = json.loads((out / "teacher" / "train_summary.json").read_text())
    return {
        "points": points,
        "distill_logs": logs,
        "teacher_train": {k: teacher[k] for k in ("steps", "final_loss", "final_parts", "vlb_first", "variance_type",
                                                  "seconds", "params")},
        "machine": rep["machine"], "date": rep["date"], "num_samples": rep["num_samples"],
    }


@torch.no_grad()
def held_out(out: Path) -> dict:
    """eps MSE and KL(p_T||p_S) in bits/dim of each student on OUT/heldout, trajectories of other seeds than
    the training cache's, per band of t: a low-noise view of what the KL term teaches (FID is the noisy one)."""
    from ..cache.backend import unbatch
    from ..cache.reader import CacheReader
    from ..evaluate.models import load_student_unet
    from ..teacher import load_teacher

    teacher = load_teacher(str(out / "teacher"), "cpu")
    reader = CacheReader(str(out / "heldout"))
    rows = [r for shard in reader.manifest["shards"] for r in unbatch(reader.blocks(shard), reader.dtype)]
    x = torch.stack([r[0] for r in rows])
    t = torch.tensor([int(r[1]) for r in rows])
    target = torch.stack([r[2] for r in rows])
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config({k: v for k, v in teacher.scheduler_config.items() if not k.startswith("_")})
    c = teacher.sample_shape[0]
    res = {"records": len(rows), "bands": {}}
    for name in ("student-kl1", "student-kl0"):
        unet = load_student_unet(str(out / name / "student"), "cpu").eval()
        pred = torch.cat([unet(x[i:i + 512], t[i:i + 512]).sample for i in range(0, len(x), 512)])
        for lo, hi in T_BANDS:
            sel = (t >= lo) & (t <= hi)
            if sel.any():
                band = res["bands"].setdefault(f"{lo}-{hi}", {"records": int(sel.sum())})
                band[name] = _scores(pred[sel], target[sel], x[sel], t[sel], sched, c)
        res[name] = _scores(pred, target, x, t, sched, c)
    return res


def _scores(pred, target, x, t, sched, c) -> dict:
    from ..distill.losses import eps_mse, kl_learned_variance

    return {"eps_mse": float(eps_mse(pred, target, c)),
            "kl_bits": float(kl_learned_variance(pred, target, x, t, sched, c)),
            # the variance channel itself (v in [-1, 1] interpolates log beta~_t .. log beta_t): what the KL teaches
            "v_mae": float((pred[:, c:] - target[:, c:]).abs().mean())}


def table(data: dict) -> str:
    settings = sorted({(p["scheduler"], p["steps"]) for p in data["points"]})
    at = {(p["model"], p["scheduler"], p["steps"]): p for p in data["points"]}
    lines = ["| sampler | " + " | ".join(MODELS.values()) + " | no KL / KL |", "|---|" + "---:|" * (len(MODELS) + 1)]
    for kind, steps in settings:
        row = [at.get((m, kind, steps)) for m in MODELS]
        cells = [f"{p['fid']:.2f}" if p else "–" for p in row]
        ratio = f"{row[2]['fid'] / row[1]['fid']:.2f}" if row[1] and row[2] else "–"
        lines.append(f"| {kind}-{steps} | " + " | ".join(cells) + f" | {ratio} |")
    h = data.get("held_out")
    if h:
        lines += ["", f"Held-out records ({h['records']:,}, trajectories of another seed): eps MSE / KL(p_T||p_S) in bits per dim / mean |v_S - v_T|",
                  "", "| t | records | " + " | ".join(MODELS[n] for n in ("student-kl1", "student-kl0")) + " |", "|---|---:|---:|---:|"]
        for band, b in [*h["bands"].items(), ("all", {"records": h["records"], **{n: h[n] for n in ("student-kl1", "student-kl0")}})]:
            cells = [f"{b[n]['eps_mse']:.4f} / {b[n]['kl_bits']:.4f} / {b[n]['v_mae']:.3f}" for n in ("student-kl1", "student-kl0")]
            lines.append(f"| {band} | {b['records']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    from ..figures import plt, save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for n, rows in data["distill_logs"].items():
        a.plot([r["step"] for r in rows], [r["eps_mse"] for r in rows], label=f"{MODELS[n]}: eps MSE")
        if any("kl" in r for r in rows):
            a.plot([r["step"] for r in rows if "kl" in r], [r["kl"] for r in rows if "kl" in r], "--", label=f"{MODELS[n]}: KL (bits/dim)")
    a.set_yscale("log")
    a.set_xlabel("student step")
    a.set_title("loss parts while distilling")
    a.legend(fontsize=8)
    settings = sorted({(p["scheduler"], p["steps"]) for p in data["points"]})
    w = 0.8 / len(MODELS)
    for i, (m, label) in enumerate(MODELS.items()):
        vals = [next((p["fid"] for p in data["points"] if (p["model"], p["scheduler"], p["steps"]) == (m, k, s)), 0)
                for k, s in settings]
        b.bar([j + (i - 1) * w for j in range(len(settings))], vals, w, label=label)
    b.set_xticks(range(len(settings)), [f"{k}-{s}" for k, s in settings])
    b.set_ylabel("FID vs real digits ↓")
    b.set_title("DDPM reads the learned variance; DDIM ignores it")
    b.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    out, docs = Path(argv[0]), Path(argv[1] if len(argv) > 1 else "docs")
    data = collect(out)
    if (out / "heldout").exists():
        data["held_out"] = held_out(out)
    atomic_write_json(docs / "learned-variance.json", data)
    plot(data, docs / "learned-variance.png")
    print(table(data))


if __name__ == "__main__":
    main(sys.argv[1:])
