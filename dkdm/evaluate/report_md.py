"""report.md: the tables a reviewer reads, rendered from report.json's figures."""

from __future__ import annotations


def _f(v, fmt=".2f", none="n/a"):
    return none if v is None else format(v, fmt)


def _energy(r) -> str:
    e = r["energy"]
    return f"{e['joules_per_image']:.4g}" if e.get("available") else "unavailable"


def _mem(r) -> str:
    return "n/a (CPU)" if r.get("peak_memory_bytes") is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"


def render_markdown(report: dict) -> str:
    rows = [("teacher", report["teacher"])] + list(report["students"].items())
    t = report["teacher"]
    s = report["sampler"]
    ref = report["reference"]
    m = report["machine"]
    L = [
        "# dkdm evaluation report",
        "",
        f"Sampler **{s['class']}** ({s['scheduler']}, {s['steps']} steps, eta {s['eta']}, {s['timestep_spacing']} spacing); "
        f"{report['num_samples']} samples, seeds {report['seeds'][0]}..{report['seeds'][1]} for every model. "
        f"Reference: {ref['name']} (n = {ref['n']}). Features: {report['feature_extractor']}. "
        f"Machine: {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, {m['platform']}, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}; {report['date']}.",
        "",
        "## Quality and cost",
        "",
        "| model | FID ↓ | KID ↓ | images/s | speed-up | latency b=1 p50 / p95 (ms) | params | GFLOPs/step | GFLOPs/image | peak mem (MiB) | J/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        L.append(f"| {name} | {r['fid']:.2f} | {_f(r['kid'], '.4f')} | {r['images_per_s']:.1f} | "
                 f"{r['images_per_s'] / t['images_per_s']:.2f}x | {r['latency_b1_ms_p50']:.1f} / {r['latency_b1_ms_p95']:.1f} | "
                 f"{r['params']:,} | {r['flops_per_step'] / 1e9:.4f} | {r['flops_per_image'] / 1e9:.3f} | {_mem(r)} | {_energy(r)} |")
    L += ["", f"images/s at batch {t['batch_size']}: median of {len(t['seconds_per_batch_all'])} timed runs after a warm-up "
              f"({t['timer']}), the models taking turns in each round; latency: batch 1, all steps."]
    for name, per in report.get("speedups_per_round", {}).items():
        L.append(f"Speed-up of {name} per round (teacher seconds / student seconds, back to back): "
                 + ", ".join(f"{v:.2f}x" for v in per) + ".")
    if not report["energy"]["available"]:
        L.append(f"Energy: **unavailable** on this machine — {report['energy']['reason']}. No estimate is given.")
    else:
        L.append(f"Energy: measured with {report['energy']['counter']} over the timed runs.")
    bs = list(t["throughput"])
    if len(bs) > 1:
        L += ["", "### Throughput by batch size (images/s)", "", "| model | " + " | ".join(f"b={b}" for b in bs) + " |",
              "|---|" + "---:|" * len(bs)]
        for name, r in rows:
            L.append(f"| {name} | " + " | ".join(f"{r['throughput'][b]['images_per_s']:.1f}" for b in bs) + " |")
    ps = report["paired_sampler"]
    L += ["", "## Fidelity to the teacher", "",
          f"Same initial noise, deterministic sampler ({ps['scheduler']}, {ps['steps']} steps, eta {ps['eta']}). "
          "Pixel RMSE per seed on images in [-1, 1]; feature L2 per seed in the FID feature space; "
          "FID/KID student↔teacher over the same seeds (the data-free score: needs no real data).", "",
          "| student | FID↔teacher | KID↔teacher | RMSE mean | RMSE p05 / median / p95 | feature L2 mean |",
          "|---|---:|---:|---:|---:|---:|"]
    for name, r in report["students"].items():
        p = r["paired"]["pixel_rmse"]
        fl = r["paired"].get("feature_l2", {}).get("mean")
        L.append(f"| {name} | {r['fid_vs_teacher']:.2f} | {r['kid_vs_teacher']:.4f} | {p['mean']:.4f} | "
                 f"{p['p05']:.4f} / {p['median']:.4f} / {p['p95']:.4f} | {_f(fl, '.3f')} |")
    sw = report.get("sweep")
    if sw:
        L += ["", "## Sweep: scheduler × steps", "",
              f"{sw['samples']} samples per point (seeds {sw['seeds'][0]}..{sw['seeds'][1]}), batch {sw['batch_size']}; "
              "FID against the same reference (fewer samples than above, so FIDs are higher: compare within this table). "
              "Time: median over batches of the sampling time per image. DPM-Solver++ and Euler use 'leading' spacing "
              "when the first 'trailing' timestep has alpha_bar ~ 0 (this teacher's squaredcos_cap_v2 schedule at t=999), "
              "where they diverge.", "",
              "| model | scheduler | steps | spacing | FID ↓ | KID ↓ | ms/image | J/image |", "|---|---|---:|---|---:|---:|---:|---:|"]
        for p in sw["points"]:
            L.append(f"| {p['model']} | {p['scheduler']} | {p['steps']} | {p['timestep_spacing']} | {p['fid']:.2f} | {_f(p['kid'], '.4f')} | "
                     f"{1000 * p['seconds_per_image']:.2f} | {_f(p['joules_per_image'], '.4g', 'unavailable')} |")
        L += ["", "### Pareto front (quality vs time)", "", "| model | scheduler | steps | FID | ms/image |", "|---|---|---:|---:|---:|"]
        for p in sw["pareto_time"]:
            L.append(f"| {p['model']} | {p['scheduler']} | {p['steps']} | {p['fid']:.2f} | {1000 * p['seconds_per_image']:.2f} |")
        c = sw["cheapest_time"]
        L += ["", f"Target FID ≤ {sw['target_fid']:.2f} ({sw['target_rule']}): " +
              (f"cheapest in time is **{c['model']} · {c['scheduler']} · {c['steps']} steps** "
               f"(FID {c['fid']:.2f}, {1000 * c['seconds_per_image']:.2f} ms/image)." if c else "no swept setting reaches it.")]
        if sw["energy"]["available"]:
            ce = sw["cheapest_energy"]
            L.append("Cheapest in energy: " + (f"**{ce['model']} · {ce['scheduler']} · {ce['steps']}** "
                                               f"({ce['joules_per_image']:.4g} J/image)." if ce else "none reaches it."))
        else:
            L.append(f"Quality-vs-energy front: unavailable ({sw['energy']['reason']}).")
    L += fewstep_lines(report.get("fewstep"))
    png = report.get("pngs", {})
    L += ["", "## Figures", ""]
    captions = {"samples": "same seeds: teacher | students", "paired": "per-seed distance to the teacher",
                "quality_vs_steps": "FID vs sampling steps", "pareto_time": "quality vs time (Pareto front)",
                "pareto_energy": "quality vs energy (Pareto front)",
                "fewstep_grid": "same seeds: teacher at the main setting | students at their own steps",
                "pareto_fewstep": "students at their own steps vs the teacher's whole front", "pca": "PCA of features", "tsne": "t-SNE of features"}
    for k, cap in captions.items():
        if k in png:
            L += [f"![{cap}]({png[k]})", ""]
    return "\n".join(L)


def _setting(p) -> str:
    return "n/a" if p is None else f"{p['scheduler']}-{p['steps']} (FID {p['fid']:.2f}, {1000 * p['seconds_per_image']:.2f} ms)"


def _speedup(eq: dict | None, lb: dict | None) -> str:
    return f"{eq['speedup']:.1f}x" if eq else (f"> {lb['speedup']:.1f}x (teacher never reaches it)" if lb else "n/a")


def _confirm_note(fr: dict) -> str:
    c = fr.get("confirmed")
    if not c:
        return ""
    pts = ", ".join(f"{p['scheduler']}-{p['steps']} {p['fid_sweep']:.2f} -> {p['fid']:.2f}" for p in c["points"])
    return (f" The last three columns read the crossing on the main seeds (n = {c['n']}): FID on few samples favours "
            f"less diverse models, so the teacher's front settings near each crossing were scored again ({pts}).")


def fewstep_lines(few: dict | None) -> list[str]:
    """Each student at its own scheduler and steps, against the teacher's main setting and its whole front."""
    if not few:
        return []
    t = few["teacher"]
    L = ["", "## Students at their own scheduler and steps", "",
         f"Same {few['n']} seeds ({few['seeds'][0]}..{few['seeds'][1]}) as the main table; the baseline is the teacher at "
         f"the main setting ({t['scheduler']}, {t['steps']} steps): FID {t['fid']:.2f}, {t['images_per_s']:.1f} images/s at "
         f"batch {few['batch_size']}. {few['note']}.", "",
         "| student | scheduler | steps | FID ↓ | FID / teacher | KID ↓ | images/s | speed-up vs teacher | ms/image |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in few["rows"]:
        L.append(f"| {r['model']} | {r['scheduler']} | {r['steps']} | {r['fid']:.2f} | {_f(r['fid_ratio'], '.2f')}x | "
                 f"{_f(r['kid'], '.4f')} | {r['images_per_s']:.1f} | {r['speedup']:.2f}x | {1000 * r['seconds_per_image']:.2f} |")
    fr = few.get("front")
    if not fr:
        return L + ["", "Against the teacher's whole front: not measured (give sweep_schedulers and sweep_steps)."]
    L += ["", "### Against the teacher's whole quality-vs-time front", "",
          f"FIDs on the sweep's {fr['n']} seeds (teacher points: n = {fr['n_teacher']}, {fr['teacher_points']} settings). "
          "'Teacher, same time': the teacher's best FID in no more time per image. 'Equal FID': the teacher's cheapest "
          "setting reaching the student's FID, and how many times slower it is." + _confirm_note(fr), "",
          "| student | setting | FID (front n) | ms/image | teacher, same time | teacher, equal FID | speed-up at equal FID |"
          + (f" FID (n = {fr['confirmed']['n']}) | teacher, equal FID (n = {fr['confirmed']['n']}) | speed-up (n = "
             f"{fr['confirmed']['n']}) |" if fr.get("confirmed") else ""),
          "|---|---|---:|---:|---|---|---:|" + ("---:|---|---:|" if fr.get("confirmed") else "")]
    for r in few["rows"]:
        eq = r.get("equal_fid")
        L.append(f"| {r['model']} | {r['scheduler']}-{r['steps']} | {r['front_fid']:.2f} | {1000 * r['seconds_per_image']:.2f} | "
                 f"{_setting(r['teacher_same_time'])} | {_setting(eq)} | {_speedup(eq, r.get('equal_fid_lower_bound'))} |"
                 + (f" {r['fid']:.2f} | {_setting(r.get('equal_fid_n'))} | "
                    f"{_speedup(r.get('equal_fid_n'), r.get('equal_fid_n_lower_bound'))} |" if fr.get("confirmed") else ""))
    L += ["", "Pareto front of everything (teacher settings and students at their own steps):", "",
          "| model | setting | FID | ms/image |", "|---|---|---:|---:|"]
    for p in fr["front"]:
        L.append(f"| {p['model']} | {p['scheduler']}-{p['steps']} | {p['fid']:.2f} | {1000 * p['seconds_per_image']:.2f} |")
    return L
