"""The docs/fewstep.md results table and docs/fewstep-digits.json from `python -m dkdm.bench.fewstep` outputs
(numbers straight from the runs; mean and range over distillation seeds; equal-FID speed-up against the teacher's
measured settings).

    python -m dkdm.bench.fewstep_table RUN_DIR OUT.json   # reads RUN_DIR/eval-*.json
"""
import json, statistics, sys
from pathlib import Path


def main() -> None:
    ex = Path(sys.argv[1])
    files = ["eval-teacher.json"] + sorted(p.name for p in ex.glob("eval-*.json") if p.name != "eval-teacher.json")  # the first scored the teacher
    runs = {f: json.loads((ex / f).read_text()) for f in files}
    teacher = runs["eval-teacher.json"]["rows"][0]
    tfid = teacher["fid"]
    # run names RUN-sSEED: the prefix says the kind (teacher-width students start as a copy of the teacher)
    KIND = {"tj1": "teacher-width, trajectory, 1-step DDIM", "tj2": "teacher-width, trajectory, 2-step DDIM",
            "tj4": "teacher-width, trajectory, 4-step DDIM", "cm": "teacher-width, consistency (LCM), one network",
            "nwtj2w": "narrow (16,32,32), trajectory 2-step, warm start from its eps student",
            "nwtj2wL": "narrow (16,32,32), trajectory 2-step, warm start, 3,000 steps",
            "cmc": "teacher-width, consistency (LCM), 1,500 more steps from cm (lr 2.5e-4)",
            "wtj2w": "narrow (8,32,64), trajectory 2-step, warm start from its eps student",
            "mtj2w": "narrow (16,48,48), attention at 4x4, trajectory 2-step, warm start from its eps student"}
    GOAL = {("tj1", 1): 1.6, ("tj2", 2): 1.3, ("tj4", 4): 1.15, ("cm", 1): 1.6, ("cm", 2): 1.3, ("cm", 4): 1.15,
            ("nwtj2w", 2): 1.5, ("nwtj2wL", 2): 1.5, ("cmc", 1): 1.6, ("cmc", 2): 1.3, ("cmc", 4): 1.15, ("wtj2w", 2): 1.5, ("mtj2w", 2): 1.5}
    seen = {}  # one row per (student, steps): a later run that also timed it replaces an untimed one
    for f, r in runs.items():
        for row in r["rows"][1:]:
            key = (Path(row["model"]).name, row["steps"])
            if key not in seen or row.get("images_per_s"):
                seen[key] = {**row, "file": f, "teacher_images_per_s_same_run": r["rows"][0].get("images_per_s")}
    rows = list(seen.values())
    front = [p for r in runs.values() for p in r.get("teacher_front", [])]
    t_points = [{"scheduler": "ddim", "steps": 25, "fid": tfid, "seconds_per_image": teacher["seconds_per_image"]}] + front
    by = {}
    for row in rows:
        pre = Path(row["model"]).name.rsplit("-s", 1)[0]
        by.setdefault((pre, row["steps"]), []).append(row)
    # images/s in turns with the teacher's DDIM-25 (the reliable speed figure): per network and step count
    arch = {k: "narrow" if k.startswith("nw") else "narrow (8,32,64)" if k.startswith("w") else \
        "narrow (16,48,48)" if k.startswith("m") else "teacher-width" for k in KIND}
    timed_by = {}
    for (p, k), rs in by.items():
        timed_by.setdefault((arch[p], k), []).extend(r["speedup_vs_teacher_ddim25"] for r in rs if r.get("images_per_s"))
    turns = {key: statistics.median(v) for key, v in timed_by.items() if v}  # median over the runs that timed it
    out_rows, lines = [], [
        "| student | steps | seeds | FID mean | FID range | mean / teacher DDIM-25 | goal | images/s (b128) | vs teacher DDIM-25 images/s |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|",
        f"| teacher, DDIM-25 | 25 | – | {tfid:.2f} | – | 1.00x | – | {teacher['images_per_s']:.1f} | 1.00x |"]
    for (pre, steps), rs in sorted(by.items(), key=lambda kv: (list(KIND).index(kv[0][0]), kv[0][1])):
        fids = [r["fid"] for r in rs]
        timed = [r for r in rs if r.get("images_per_s")]
        m, g = statistics.mean(fids), GOAL.get((pre, steps))
        ips = f"{timed[0]['images_per_s']:.1f}" if timed else "–"
        sp = f"{timed[0]['speedup_vs_teacher_ddim25']:.1f}x" if timed else "–"
        lines.append(f"| {KIND[pre]} | {steps} | {len(rs)} ({', '.join(Path(r['model']).name for r in rs)}) | {m:.2f} | "
                     f"{min(fids):.2f}–{max(fids):.2f} | {m / tfid:.2f}x | {('≤ %.2fx' % g) if g else '–'} | {ips} | {sp} |")
        # equal FID against the teacher's measured points: its cheapest setting at least as good as this student
        spi = statistics.mean(r["seconds_per_image"] for r in rs)
        good = [p for p in t_points if p["fid"] <= m]
        eq = min(good, key=lambda p: p["seconds_per_image"]) if good else None
        sp_turns = turns.get((arch[pre], steps))
        out_rows.append({"student": KIND[pre], "steps": steps, "seeds": [Path(r["model"]).name for r in rs], "fid": fids, "fid_mean": m,
                         "fid_ratio_mean": m / tfid, "fid_ratio_range": [min(fids) / tfid, max(fids) / tfid], "goal_ratio": g,
                         "images_per_s_b128": timed[0]["images_per_s"] if timed else None,
                         "speedup_vs_teacher_ddim25_images_per_s": timed[0]["speedup_vs_teacher_ddim25"] if timed else None,
                         "seconds_per_image_mean": spi,
                         "teacher_cheapest_at_equal_fid": eq and {**{k: eq[k] for k in ("scheduler", "steps", "fid", "seconds_per_image")},
                                                                  "speedup_seconds_per_image": eq["seconds_per_image"] / spi,
                                                                  # teacher cost ∝ its steps (dpm++ and ddim steps cost alike, see the front)
                                                                  "speedup_from_turns": sp_turns * eq["steps"] / 25 if sp_turns else None}})
    print("\n".join(lines))
    print()
    print("| teacher setting | FID | s/image (median over batches, b128) |")
    print("|---|---:|---:|")
    for p in sorted(t_points, key=lambda p: p["seconds_per_image"]):
        print(f"| {p['scheduler']}-{p['steps']} | {p['fid']:.2f} | {p['seconds_per_image']*1000:.1f} ms |")
    print()
    for o in out_rows:
        e = o["teacher_cheapest_at_equal_fid"]
        print(f"- {o['student']} @ {o['steps']}: " + (f"teacher's cheapest setting at FID <= {o['fid_mean']:.2f} is "
              f"{e['scheduler']}-{e['steps']} (FID {e['fid']:.2f}): "
              + (f"{e['speedup_from_turns']:.1f}x faster (from the turn-taking images/s, teacher cost ∝ steps); " if e['speedup_from_turns'] else "")
              + f"{e['speedup_seconds_per_image']:.1f}x by the scoring runs' seconds/image (load-dependent)" if e else "no teacher setting measured reaches it"))
    Path(sys.argv[2]).write_text(json.dumps({"teacher_ddim25": teacher, "teacher_points": t_points, "summary": out_rows,
                                             "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
