"""The digits few-step figures at the settings issue 23 names, with `dkdm evaluate`'s own functions (same seeds,
digits reference, `measure`, `time_sampling`, each student's exported scheduler) but only those settings: the
teacher at DDIM-25 and each student at its own 1/2/4 steps. On a shared 2-core CPU the full `dkdm evaluate` also
samples every student at DDIM-25 and every supported step count, which did not fit the session.

    python -m dkdm.bench.fewstep --out docs/fewstep-digits.json --n 2048 --steps 1,2,4 STUDENT_DIR...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..evaluate.features import load_extractor
from ..evaluate.reference import real_reference
from ..evaluate.speed import time_sampling
from ..evaluate.sweep import measure, scheduler_for
from ..evaluate.models import load_student_unet
from ..evaluate.overlap import noise_seeds
from ..own_sampler import own_sampling, own_scheduler
from ..runtime import atomic_write_json
from ..sampling import unet_fn
from ..teacher import load_teacher


def bench(students: list[str], n: int, steps: list[int], seed: int = 10_000, batch: int = 128, repeats: int = 3,
          teacher_src: str = "builtin:digits", timed: list[str] | None = None, teacher_row: dict | None = None,
          teacher_settings: list[tuple[str, int]] = (), log=print) -> dict:
    """FID of the teacher (DDIM-25) and of each student at its own scheduler and `steps`; images/s for the teacher
    and the `timed` students (default all; one per architecture suffices: speed does not depend on the seed)."""
    teacher = load_teacher(teacher_src, "cpu")
    shape = teacher.sample_shape
    extractor = load_extractor("digits", shape, None, device="cpu")
    ref = real_reference("digits", extractor, shape, "cache", 0, progress=False)
    seeds = noise_seeds("evaluation", seed, n)  # `dkdm evaluate`'s seeds: sample i uses noise 2^31 + seed + i
    t_sched, _ = scheduler_for("ddim", 25, "trailing", teacher.scheduler_config)
    t0 = time.time()
    if teacher_row is not None:  # the same seeds, sampler and reference scored before: its FID is reused, its speed not
        if teacher_row.get("n") != n:
            raise SystemExit(f"--teacher-from holds n={teacher_row.get('n')}, not {n}")
        rows = [{k: v for k, v in teacher_row.items() if k not in ("images_per_s", "speedup_vs_teacher_ddim25")}]
    else:
        point, _ = measure(unet_fn(teacher.unet), t_sched, seeds, shape, batch, extractor, ref)
        rows = [{"model": "teacher", "scheduler": "ddim", "steps": 25, **point}]
    log(f"teacher ddim-25: FID {rows[0]['fid']:.3f} ({time.time() - t0:.0f}s)")
    fns, scheds = {"teacher": unet_fn(teacher.unet)}, {"teacher": t_sched}
    front = []  # the teacher at other (scheduler, steps): FID and seconds/image from `measure`, as the sweep does
    for kind, k in teacher_settings:
        sched, spacing = scheduler_for(kind, k, "trailing", teacher.scheduler_config)
        point, _ = measure(unet_fn(teacher.unet), sched, seeds, shape, batch, extractor, ref)
        front.append({"model": "teacher", "scheduler": kind, "steps": k, "spacing": spacing, **point})
        log(f"teacher {kind}-{k}: FID {point['fid']:.3f}")
    for path in students:
        unet = load_student_unet(path, "cpu")
        card = own_sampling(path)
        kind = card["scheduler"]
        for k in (steps or card["steps_supported"]):  # none given: the steps the student was made for
            sched = own_scheduler(path, k, kind)
            t0 = time.time()
            point, _ = measure(unet_fn(unet), sched, seeds, shape, batch, extractor, ref)
            label = f"{path}@{kind}-{k}"
            rows.append({"model": path, "scheduler": kind, "steps": k, **point, "fid_ratio": point["fid"] / rows[0]["fid"]})
            if timed is None or path in timed:
                fns[label], scheds[label] = unet_fn(unet), sched
            log(f"{label}: FID {point['fid']:.3f} = {point['fid'] / rows[0]['fid']:.2f}x ({time.time() - t0:.0f}s)")
    # images/s at batch 128, every model and setting taking turns in each round (speed.time_sampling)
    times, _ = time_sampling(fns, scheds, shape, batch, repeats)
    labels = ["teacher"] + [f"{r['model']}@{r['scheduler']}-{r['steps']}" for r in rows[1:]]
    for r, lab in zip(rows, labels):
        if lab not in times:
            continue
        r["images_per_s"] = batch / statistics.median(times[lab])
        r["speedup_vs_teacher_ddim25"] = statistics.median([a / b for a, b in zip(times["teacher"], times[lab])])
    return {"n": n, "seeds": [seed, seed + n - 1], "noise_seeds": [seeds[0], seeds[-1]], "reference": "digits (1,797 real images)", "features": extractor.name,
            "speed_batch": batch, "speed_rounds": repeats, "threads": torch.get_num_threads(), "rows": rows,
            "teacher_front": front}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("students", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", default="1,2,4", help="comma list, or own: each student's steps_supported")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timed", default="", help="comma list of the students to time (default all)")
    ap.add_argument("--teacher-from", default="", help="a previous output: reuse its teacher FID (same n and seeds)")
    ap.add_argument("--teacher-settings", default="", help="also score the teacher at these, e.g. ddim-4,dpm++-8")
    a = ap.parse_args()
    prev = json.loads(open(a.teacher_from).read())["rows"][0] if a.teacher_from else None
    res = bench(a.students, a.n, [] if a.steps == "own" else [int(s) for s in a.steps.split(",")], repeats=a.repeats,
                timed=[s for s in a.timed.split(",") if s] or None, teacher_row=prev,
                teacher_settings=[(s.rsplit("-", 1)[0], int(s.rsplit("-", 1)[1])) for s in a.teacher_settings.split(",") if s])
    atomic_write_json(a.out, res)
    print(json.dumps([{k: r.get(k) for k in ("model", "steps", "fid", "images_per_s")} for r in res["rows"]], indent=1))


if __name__ == "__main__":
    main()
