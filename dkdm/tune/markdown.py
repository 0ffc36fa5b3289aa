"""tune.md from tune.json: the setup, the headline comparisons with the default, the Pareto set, the choices."""

from __future__ import annotations

from .space import label


def _cost(v, unit):
    return "n/a" if v is None else (f"{v:.3g} J" if unit == "joules_per_image" else f"{1e3 * v:.2f} ms")


def _obj(o: dict, unit: str) -> str:
    parts = [f"FID {o['fid']:.2f}"]
    if o.get("adherence") is not None:
        parts.append(f"adherence {100 * o['adherence']:.1f}%")
    if o.get("bias") is not None:
        parts.append(f"bias {o['bias']:.3f}")
    parts.append(f"{_cost(o['cost'], unit)}/img")
    return ", ".join(parts)


def render(r: dict) -> str:
    unit, objs, cfg = r["cost_unit"], r["objectives"], r["config"]
    e = r["energy"]
    energy = (f"measured with {e['meter']}" if e["available"] else
              "**unavailable** (" + "; ".join(e["unavailable_because"]) + "): cost is **seconds per image**, not energy")
    lines = [f"# dkdm tune: {cfg['teacher']}" + (f" + {len(cfg['students'])} student(s)" if cfg["students"] else ""), "",
             f"{r['counts']['COMPLETE']} trials finished, {r['counts']['FAIL']} failed (recorded in tune.json); "
             f"NSGA-II, population {r['study']['population']}, seed {r['study']['seed']}; study `{r['study']['storage']}`.",
             f"Objectives: {', '.join(objs)}. Per trial: {r['samples']['quality']} quality samples (seeds "
             f"{r['samples']['quality_seeds'][0]}..{r['samples']['quality_seeds'][1]}, the same for every trial)"
             + (f" and {r['samples']['bias']} samples on the neutral prompts {cfg['neutral_prompts']}" if r["samples"]["bias"] else "")
             + f". FID against {r['reference']}. Device {r['device']}. Energy: {energy}.",
             f"Feasible: FID <= {cfg['quality_factor']} x the default's"
             + (f", adherence >= the default's - {cfg['adherence_drop']}" if "adherence" in objs else "") + ".", ""]
    h = r["headline"]
    if h:
        lines += ["## Against the default", "", f"- default (trial {h['default']['trial']}): {label(h['default']['setting'])}: "
                  f"{_obj(h['default']['objectives'], unit)}"]
        for name, md in h.get("model_defaults", {}).items():
            if name != "teacher":
                got = _obj(md["objectives"], unit) if md["objectives"] else f"FAILED: {md['error']}"
                lines.append(f"- {name} at the same default (trial {md['trial']}): {label(md['setting'])}: {got}")
        for key, what in (("equal_quality", "cheapest at equal or better quality"),
                          ("within_constraint", "cheapest within the constraint")):
            c = h.get(key)
            if c is None:
                lines.append(f"- {what}: none found")
            else:
                lines.append(f"- {what} (trial {c['trial']}): {label(c['setting'])}: {_obj(c['objectives'], unit)}; "
                             f"cost {100 * c['cost_reduction']:.0f}% lower than the default")
        if "best_bias" in h:
            b = h["best_bias"]
            red = "" if b["bias_reduction"] is None else f" ({100 * b['bias_reduction']:.0f}% lower)"
            lines.append(f"- least biased feasible (trial {b['trial']}): {label(b['setting'])}: bias {b['objectives']['bias']:.3f} "
                         f"vs the default's {h['default']['objectives']['bias']:.3f}{red}")
            nz = h["bias_noise"]
            iv = {k: f"{a:.3f}..{c:.3f}" for k, (a, c) in nz["tv_interval_90"].items()}
            lines.append(f"  - sampling noise: 90% bootstrap intervals default {iv['default']}, least biased {iv['best_bias']}; "
                         f"a perfectly balanced sampler shows {nz['uniform_floor']:.3f} on average at this sample size. "
                         f"Class histograms (digits 0-9): default {nz['histograms']['default']}, least biased "
                         f"{nz['histograms']['best_bias']}.")
        lines.append("")
    cf = r.get("confirmed")
    if cf:
        by = {t["number"]: t for t in r["trials"]}
        lines += [f"## Re-timed in turns ({cf['rounds']} rounds of {next(iter(cf['trials'].values()))['images_per_round']} "
                  "images each, the settings taking turns in every round, so they share the machine's load)", "",
                  "| trial | setting | seconds/img (median) | J/img (median) | cost / default's, per round (median) | cost reduction |",
                  "|---|---|---|---|---|---|"]
        for k, v in cf["trials"].items():
            ratio = sorted(v["ratio_to_default"])[len(v["ratio_to_default"]) // 2]
            j = v["median"]["joules_per_image"]
            lines.append(f"| {k}{' (default)' if int(k) == cf['default_trial'] else ''} | {label(by[int(k)]['setting'])} | "
                         f"{1e3 * v['median']['seconds_per_image']:.2f} ms | {'n/a' if j is None else f'{j:.3g}'} | "
                         f"{ratio:.3f} | {100 * (1 - ratio):.0f}% |")
        lines.append("")
    serve = " ".join(f"{n}={m['source']}" for n, m in r["models"].items())
    lines += ["## Chosen setting per weighting", "", "Weights on min-max normalised objectives over the Pareto set. "
              f"The serve requests name the models as tune does: `dkdm serve {serve}`.", "",
              "| weighting | trial | setting | objectives | recipe snippet | serve request |", "|---|---|---|---|---|---|"]
    for w, c in r["chosen"].items():
        if c is None:
            lines.append(f"| {w} | - | no feasible trial | | | |")
            continue
        f = c["files"] or {}
        lines.append(f"| {w} | {c['trial']} | {label(c['setting'])} | {_obj(c['objectives'], unit)} | "
                     f"`{f.get('recipe', '')}` | `{f.get('serve_request', '')}` |")
    lines += ["", "## Pareto set (feasible, non-dominated on every objective)", "",
              "| trial | setting | " + " | ".join(objs) + " |", "|---|---|" + "---|" * len(objs)]
    by = {t["number"]: t for t in r["trials"]}
    for n in r["pareto"]:
        o = by[n]["objectives"]
        cells = [_cost(o[k], unit) if k == "cost" else (f"{100 * o[k]:.1f}%" if k == "adherence" else f"{o[k]:.3f}") for k in objs]
        lines.append(f"| {n} | {label(by[n]['setting'])} | " + " | ".join(cells) + " |")
    lines += _by_template(r["trials"])
    failed = [t for t in r["trials"] if t["state"] == "FAIL"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- {t['number']}: {t['error']}" for t in failed]
    lines += [""] + [f"![{k}]({v})" for k, v in r["pngs"].items()] + [""]
    return "\n".join(lines)


def _by_template(trials: list[dict]) -> list[str]:
    """Prompt structure on its own: median bias and adherence of the finished trials that used each template."""
    import statistics

    done = [t for t in trials if t["state"] == "COMPLETE" and t["setting"].get("template") is not None
            and t["objectives"].get("bias") is not None]
    if not done:
        return []
    out = ["", "## By prompt template (all finished trials, every model and sampler)", "",
           "| template | trials | median bias | median adherence | median FID |", "|---|---|---|---|---|"]
    for tpl in dict.fromkeys(t["setting"]["template"] for t in done):
        ts = [t["objectives"] for t in done if t["setting"]["template"] == tpl]
        med = {k: statistics.median(o[k] for o in ts) for k in ("bias", "adherence", "fid")}
        out.append(f"| `{tpl}` | {len(ts)} | {med['bias']:.3f} | {100 * med['adherence']:.1f}% | {med['fid']:.1f} |")
    return out
