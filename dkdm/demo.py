"""`dkdm demo`: the whole job on the embedded digits teacher, offline, sized for a laptop CPU."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from . import config as cfgmod
from .distill.loop import distill
from .evaluate.run import evaluate
from .generate import generate


def run_demo(out: str | Path, recipe: str = "digits", progress: bool = True, log=print) -> dict:
    out = Path(out)
    r = cfgmod.load_recipe(recipe)
    gen_cfg = dataclasses.replace(r.generate, out=str(out / "cache"))
    dis_cfg = dataclasses.replace(r.distill, out=str(out), cache=str(out / "cache"), source="cache")
    ev_cfg = dataclasses.replace(r.evaluate, out=str(out), students=[str(out / "student")])
    timings = {}
    t0 = time.time()
    log(f"[1/3] generate: {gen_cfg.trajectories} teacher trajectories x {gen_cfg.sampler.steps} steps -> {gen_cfg.out}")
    gen = generate(gen_cfg, progress=progress)
    timings["generate_s"] = time.time() - t0
    t1 = time.time()
    log(f"[2/3] distill: {dis_cfg.steps} steps of batch {dis_cfg.batch_size} from the cache -> {out / 'student'}")
    dis = distill(dis_cfg, progress=progress)
    timings["distill_s"] = time.time() - t1
    t2 = time.time()
    log(f"[3/3] evaluate: {ev_cfg.num_samples} samples each, same seeds and {ev_cfg.sampler.scheduler}-{ev_cfg.sampler.steps}"
        + (", each student also at its own scheduler and steps" if ev_cfg.own_samplers else "")
        + (f"; teacher front: {'/'.join(ev_cfg.sweep_schedulers)} at {ev_cfg.sweep_steps} steps" if ev_cfg.sweep_schedulers else ""))
    report = evaluate(ev_cfg, progress=progress)
    timings["evaluate_s"] = time.time() - t2
    for line in own_summary(report):
        log(line)
    timings["total_s"] = time.time() - t0
    report["demo"] = {"timings": timings, "generate": gen, "distill": dis, "recipe": recipe}
    from .runtime import atomic_write_json

    atomic_write_json(out / "report.json", report)
    return report


def own_summary(report: dict) -> list[str]:
    """The few-step students' lines of the demo's output (the rest is the main table the CLI prints)."""
    few = report.get("fewstep")
    if not few:
        return []
    t = few["teacher"]
    out = [f"students at their own scheduler and steps (teacher {t['scheduler']}-{t['steps']}: FID {t['fid']:.2f}, "
           f"{t['images_per_s']:.1f} images/s at batch {few['batch_size']}):"]
    for r in few["rows"]:
        n = "_n" if "equal_fid_n" in r or "equal_fid_n_lower_bound" in r else ""  # confirmed on the main seeds
        eq, lb = r.get(f"equal_fid{n}"), r.get(f"equal_fid{n}_lower_bound")
        front = (f"; at equal FID vs the teacher's front: {eq['speedup']:.1f}x" if eq else
                 f"; beyond the teacher's front (> {lb['speedup']:.1f}x)" if lb else "")
        out.append(f"  {r['model']} {r['scheduler']}-{r['steps']}: FID {r['fid']:.2f} ({r['fid_ratio']:.2f}x the teacher's), "
                   f"{r['images_per_s']:.1f} images/s ({r['speedup']:.1f}x){front}")
    return out
