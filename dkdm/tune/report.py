"""tune.json (every trial), tune.md (Pareto set, the choice per weighting, the headline comparisons), PNG scatters,
and the chosen settings as a recipe snippet (`dkdm evaluate[-t2i] --recipe`) and a `dkdm serve` request body."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import TuneConfig
from ..runtime import atomic_write_bytes, atomic_write_json
from .bias import tv_interval, uniform_floor
from .space import apply_template, label

SIGN = {"fid": 1, "adherence": -1, "cost": 1, "bias": 1}  # lower is better after the sign
# how much each objective counts when one setting is picked from the Pareto set (min-max normalised objectives)
WEIGHTINGS = {
    "balanced": {"fid": 1, "adherence": 1, "cost": 1, "bias": 1},
    "quality-first": {"fid": 4, "adherence": 4, "cost": 1, "bias": 1},
    "cost-first": {"fid": 1, "adherence": 1, "cost": 4, "bias": 1},
    "bias-first": {"fid": 1, "adherence": 1, "cost": 1, "bias": 4},
}


def trial_rows(study, cost_unit: str) -> list[dict]:
    rows = []
    for t in study.trials:
        m = t.user_attrs.get("metrics")
        c = t.user_attrs.get("constraints")
        rows.append({"number": t.number, "state": t.state.name, "default": bool(t.user_attrs.get("default")),
                     "model_default": t.user_attrs.get("model_default") or ("teacher" if t.user_attrs.get("default") else None),
                     "setting": t.user_attrs.get("setting"), "params": t.params,
                     "objectives": None if m is None else {"fid": m["fid"], "adherence": m.get("adherence"),
                                                          "cost": m[cost_unit], "bias": m.get("bias")},
                     "metrics": m, "constraints": c, "feasible": None if c is None else all(v <= 0 for v in c),
                     "error": t.user_attrs.get("error"), "wall_s": t.user_attrs.get("wall_s")})
    return rows


def dominates(a: dict, b: dict, objectives: list[str]) -> bool:
    pa = [SIGN[o] * a[o] for o in objectives]
    pb = [SIGN[o] * b[o] for o in objectives]
    return all(x <= y for x, y in zip(pa, pb)) and any(x < y for x, y in zip(pa, pb))


def pareto_set(rows: list[dict], objectives: list[str]) -> list[dict]:
    """Feasible finished trials that no other feasible trial dominates, cheapest first."""
    ok = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
    front = [r for r in ok if not any(dominates(q["objectives"], r["objectives"], objectives) for q in ok)]
    return sorted(front, key=lambda r: r["objectives"]["cost"])


def choose(front: list[dict], objectives: list[str], weights: dict) -> dict | None:
    """The Pareto trial with the least weighted sum of min-max normalised objectives (each oriented lower-better)."""
    if not front:
        return None
    span = {}
    for o in objectives:
        v = [SIGN[o] * r["objectives"][o] for r in front]
        span[o] = (min(v), (max(v) - min(v)) or 1.0)
    return min(front, key=lambda r: sum(weights.get(o, 1) * (SIGN[o] * r["objectives"][o] - span[o][0]) / span[o][1]
                                        for o in objectives))


def cheapest(rows: list[dict], default: dict, fid_factor: float, adherence_drop: float) -> dict | None:
    """The cheapest finished trial with FID <= fid_factor x default and adherence >= default - adherence_drop."""
    d = default["objectives"]
    ok = [r for r in rows if r["state"] == "COMPLETE" and r["objectives"]["fid"] <= fid_factor * d["fid"]
          and (d["adherence"] is None or r["objectives"]["adherence"] >= d["adherence"] - adherence_drop)]
    return min(ok, key=lambda r: r["objectives"]["cost"]) if ok else None


def headline(rows: list[dict], cfg: TuneConfig) -> dict:
    default = next((r for r in rows if r["default"] and r["state"] == "COMPLETE"), None)
    if default is None:
        return {}
    out = {"default": _brief(default),
           "model_defaults": {r["setting"]["model"]: {**_brief(r), "state": r["state"], "error": r["error"]}
                              for r in rows if r.get("model_default")}}
    c0 = default["objectives"]["cost"]
    for name, (f, drop) in {"equal_quality": (1.0, 0.0), "within_constraint": (cfg.quality_factor, cfg.adherence_drop)}.items():
        r = cheapest(rows, default, f, drop)
        out[name] = None if r is None else {**_brief(r), "fid_factor": f, "adherence_drop": drop,
                                            "cost_reduction": 1 - r["objectives"]["cost"] / c0}
    if default["objectives"]["bias"] is not None:
        feas = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
        best = min(feas, key=lambda r: r["objectives"]["bias"])
        out["best_bias"] = {**_brief(best), "bias_reduction": 1 - best["objectives"]["bias"] / default["objectives"]["bias"]
                            if default["objectives"]["bias"] else None}
        hist = {k: r["metrics"]["bias_detail"]["histogram"] for k, r in (("default", default), ("best_bias", best))}
        out["bias_noise"] = {"tv_interval_90": {k: tv_interval(h) for k, h in hist.items()},
                             "histograms": hist, "uniform_floor": uniform_floor(sum(hist["default"]), len(hist["default"]))}
    return out


def picked_trials(rows: list[dict], cfg: TuneConfig, objectives: list[str]) -> list[int]:
    """The default first, then every trial the report compares with it (headline and chosen settings)."""
    h = headline(rows, cfg)
    if not h:
        return []
    front = pareto_set(rows, objectives)
    named = [md["trial"] for md in h["model_defaults"].values() if md["state"] == "COMPLETE"]  # each model at the default
    named += [h[k]["trial"] for k in ("equal_quality", "within_constraint", "best_bias") if h.get(k)]
    named += [c["number"] for w, ws in WEIGHTINGS.items() if (c := choose(front, objectives, ws))]
    return list(dict.fromkeys([h["default"]["trial"], *named]))


def _brief(r: dict) -> dict:
    return {"trial": r["number"], "setting": r["setting"], "objectives": r["objectives"]}




def trial_line(frozen, done: int, total: int, cost_unit: str) -> str:
    """One line per trial: its setting and objectives (or why it failed), and whether it meets the constraints."""
    s = frozen.user_attrs.get("setting")
    head = f"trial {frozen.number:>3} [{done}/{total}] {label(s) if s else '?'}"
    if frozen.state.name != "COMPLETE":
        return f"{head} | FAILED: {frozen.user_attrs.get('error', frozen.state.name)}"
    m = frozen.user_attrs["metrics"]
    parts = [f"FID {m['fid']:.2f}"]
    if m.get("adherence") is not None:
        parts.append(f"adherence {100 * m['adherence']:.1f}%")
    if m.get("bias") is not None:
        parts.append(f"bias(TV) {m['bias']:.3f}")
    parts.append(f"{m['joules_per_image']:.3g} J/img" if cost_unit == "joules_per_image" else f"{1e3 * m['seconds_per_image']:.2f} ms/img")
    feas = all(v <= 0 for v in frozen.user_attrs.get("constraints", [0]))
    tag = "default" if frozen.user_attrs.get("default") else ("feasible" if feas else "infeasible")
    return f"{head} | {' '.join(parts)} | {tag}"


def snippet(r: dict, weighting: str, cfg: TuneConfig, prompts_path: Path | None, subjects: list[str]) -> str:
    """A recipe that `dkdm evaluate` / `dkdm evaluate-t2i` load: the chosen sampler (and guidance, templated prompts)."""
    s = r["setting"]
    q = json.dumps
    lines = [f"# dkdm tune, weighting {weighting!r}: trial {r['number']}, {label(s)}",
             f"# run: dkdm evaluate{'-t2i' if s['guidance'] is not None else ''} --recipe THIS_FILE --student STUDENT "
             f"(model chosen: {s['model']})", ""]
    if s["guidance"] is not None:
        lines += ["[generate]", f"prompts = {q(str(prompts_path))}  # the subjects with the chosen template",
                  f"guidance_scale = {s['guidance']}", ""]
    lines += ["[evaluate]", f"teacher = {q(cfg.teacher)}", f"students = {q([x.rpartition('=')[2] for x in cfg.students])}", "",
              "[evaluate.sampler]", f"scheduler = {q(s['scheduler'])}", f"steps = {s['steps']}",
              f"eta = {float(s['eta'] or 0.0)}", f"timestep_spacing = {q(cfg.default.timestep_spacing)}", ""]
    return "\n".join(lines)


def serve_request(r: dict, subjects: list[str]) -> dict:
    """The body of POST /v1/generate for `dkdm serve teacher=... NAME=STUDENT` that samples the chosen setting."""
    s = r["setting"]
    body = {"model": s["model"], "steps": s["steps"], "scheduler": s["scheduler"], "eta": float(s["eta"] or 0.0), "seed": 0, "n": 1}
    if s["guidance"] is not None:
        body |= {"guidance": s["guidance"], "prompt": apply_template(s["template"], subjects[0] if subjects else "")}
    return body


def write_report(study, cfg: TuneConfig, meta: dict, out: Path) -> dict:
    from . import plots
    from .markdown import render
    from .objectives import read_subjects

    objectives, cost_unit = meta["objectives"], meta["cost_unit"]
    rows = trial_rows(study, cost_unit)
    front = pareto_set(rows, objectives)
    chosen = {w: choose(front, objectives, ws) for w, ws in WEIGHTINGS.items() if "bias" in objectives or w != "bias-first"}
    subjects = read_subjects(cfg.prompts) if cfg.prompts and meta["models"]["teacher"]["conditional"] else []
    files = {}
    for w, r in chosen.items():
        if r is None:
            continue
        pfile = None
        if r["setting"]["template"] is not None:
            pfile = (out / f"tune-prompts-{w}.txt").resolve()
            atomic_write_bytes(pfile, ("\n".join(apply_template(r["setting"]["template"], p) for p in subjects) + "\n").encode())
        atomic_write_bytes(out / f"tune-recipe-{w}.toml", snippet(r, w, cfg, pfile, subjects).encode())
        atomic_write_json(out / f"tune-request-{w}.json", serve_request(r, subjects))
        files[w] = {"recipe": f"tune-recipe-{w}.toml", "serve_request": f"tune-request-{w}.json"}
    report = {**meta, "study": {"storage": str(out / "tune.db"), "name": study.study_name, "sampler": "NSGAIISampler",
                                "population": cfg.population, "seed": cfg.seed},
              "samples": {"quality": cfg.num_samples, "bias": cfg.bias_samples if "bias" in objectives else 0,
                          "quality_seeds": [cfg.sample_seed, cfg.sample_seed + cfg.num_samples - 1]},
              "counts": {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "FAIL")},
              "headline": headline(rows, cfg), "weightings": WEIGHTINGS,
              "chosen": {w: None if r is None else {"trial": r["number"], "setting": r["setting"], "objectives": r["objectives"],
                                                    "files": files.get(w)} for w, r in chosen.items()},
              "pareto": [r["number"] for r in front], "trials": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    report["pngs"] = plots.scatters(rows, front, objectives, cost_unit, out)
    atomic_write_json(out / "tune.json", report)
    atomic_write_bytes(out / "tune.md", render(report).encode())
    return report
