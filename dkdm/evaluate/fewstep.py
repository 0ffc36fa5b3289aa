"""Each student at its own scheduler and steps (its card: 1/2/4/8 for a consistency student), against the teacher at
the main setting (DDIM-25, same seeds) and against the teacher's whole quality-vs-time front (the sweep)."""

from __future__ import annotations

import statistics

import torch

from ..own_sampler import own_sampling, own_scheduler
from ..progress import progress_bar
from ..sampling import sample, unet_fn
from ..schedulers import kind_of
from .front_confirm import confirm_equal_fid
from .speed import time_sampling
from .overlap import noise_seeds
from .sweep import cheapest_reaching, measure, pareto_front, scheduler_for

UNIT_NOTE = ("FID on the main seeds (n as the main table) and, for the front, on the sweep's seeds (a prefix of "
             "them, n as the sweep); seconds/image: median over batches of the sampling time, as in the sweep; "
             "images/s and speed-up: the teacher's main setting and every student setting taking turns in each round; a row "
             "marked reused is the student's main-table sampler itself: its samples and turns are the main table's")


def own_settings(students: dict) -> dict:
    """{name: [(kind, steps), ...]} for students whose card names its own sampling; others keep the main sampler."""
    out = {}
    for name, path in students.items():
        s = own_sampling(path)
        if s is not None:
            out[name] = [(s["scheduler"], n) for n in s["steps_supported"]]
    return out


GRID_SEEDS = 16  # images per panel of fewstep_grid.png


def same_sampler(a, b) -> bool:
    """Two schedulers that sample alike: same class, timesteps and (public) config."""
    if type(a) is not type(b) or not torch.equal(torch.as_tensor(a.timesteps), torch.as_tensor(b.timesteps)):
        return False
    return {k: v for k, v in a.config.items() if not k.startswith("_")} == {k: v for k, v in b.config.items()
                                                                          if not k.startswith("_")}


def evaluate_own(models: dict, paths: dict, main_sched, teacher_fid: float, seeds, shape, cfg, extractor, ref,
                 sweep: dict | None, device, progress: bool = True, main: dict | None = None,
                 teacher_config: dict | None = None) -> tuple[dict | None, list]:
    """The report's `fewstep` section (None when no student card names its own sampling), and the grid's panels:
    (label, images) for the first GRID_SEEDS seeds, the teacher at the main setting first.
    main: the main table's {"scheds", "feats", "times"} per model: a student's own setting that IS its main
    sampler (an eps student at DDIM-25) reuses those samples and timings instead of sampling them again."""
    settings = own_settings({n: p for n, p in paths.items() if n != "teacher"})
    if not settings:
        return None, []
    seeds = list(seeds)
    bar = progress_bar(len(seeds) * sum(map(len, settings.values())), "own samplers", disable=not progress, unit="img")
    rows, scheds, reused = [], {}, {}
    bs = (cfg.speed_batch_sizes or [cfg.batch_size])[0]  # the main table's turn-taking batch size too
    # the front compares FIDs on the sweep's seeds: a prefix of the main seeds reuses the same images
    # (sweep["seeds"] are sample indices; their noise seeds follow cfg.seed_space like the main ones)
    front_seeds = noise_seeds(cfg.seed_space, sweep["seeds"][0], sweep["samples"]) if sweep else []
    prefix = front_seeds == seeds[:len(front_seeds)]
    front_n = len(front_seeds)
    for name, todo in settings.items():
        for kind, steps in todo:
            sched = own_scheduler(paths[name], steps, kind)
            label = f"{name} · {kind}-{steps}"
            scheds[label] = sched
            if main and same_sampler(sched, main["scheds"][name]):
                feats, times = main["feats"][name], main["times"][name]
                point = {"n": len(seeds), "fid": ref.fid(feats), "kid": ref.kid(feats), "reused": "main table",
                         "seconds_per_image": statistics.median(times) / bs, "joules_per_image": None}
                reused[label] = times
                bar.update(len(seeds))
            else:
                point, feats = measure(unet_fn(models[name]), sched, seeds, shape, cfg.batch_size, extractor, ref,
                                       device=device, bar=bar, label=(name, f"{kind}-{steps}"))
            row = {"model": name, "label": label, "scheduler": kind, "steps": steps, **point,
                   "fid_ratio": point["fid"] / teacher_fid if teacher_fid else None}
            if sweep and prefix:  # the same samples scored on the sweep's seeds: comparable with the teacher's front
                row["front_fid"] = ref.fid(feats[:front_n]) if front_n < len(seeds) else point["fid"]
            elif sweep:
                row["front_fid"] = measure(unet_fn(models[name]), sched, front_seeds, shape, cfg.batch_size, extractor, ref,
                                           device=device)[0]["fid"]
            rows.append(row)
    bar.close()
    k = min(GRID_SEEDS, len(seeds))
    panels = [(f"teacher {kind_of(main_sched)}-{len(main_sched.timesteps)}", sample(unet_fn(models["teacher"]), main_sched,
                                                                                   seeds[:k], shape, device=device).cpu())]
    panels += [(f"{r['model']} {r['scheduler']}-{r['steps']}", sample(unet_fn(models[r["model"]]), scheds[r["label"]],
                                                                       seeds[:k], shape, device=device).cpu()) for r in rows]
    fns = {"teacher": unet_fn(models["teacher"])} | {r["label"]: unet_fn(models[r["model"]]) for r in rows
                                                     if r["label"] not in reused}
    # a reused row keeps the main table's rounds, taken in turns with the teacher's, at the same batch size
    times = time_sampling(fns, {"teacher": main_sched} | scheds, shape, bs, cfg.speed_repeats, device=device)[0] \
        if len(fns) > 1 else {}
    for r in rows:
        mine, teacher = (reused[r["label"]], main["times"]["teacher"]) if r["label"] in reused else \
            (times[r["label"]], times["teacher"])
        r["images_per_s"] = bs / statistics.median(mine)
        r["speedup_per_round"] = [a / b for a, b in zip(teacher, mine)]
        r["speedup"] = statistics.median(r["speedup_per_round"])
    teacher_times = times.get("teacher") or main["times"]["teacher"]
    out = {"rows": rows, "batch_size": bs, "n": len(seeds), "seeds": [seeds[0], seeds[-1]], "note": UNIT_NOTE,
           "teacher": {"scheduler": kind_of(main_sched), "steps": len(main_sched.timesteps), "fid": teacher_fid,
                       "images_per_s": bs / statistics.median(teacher_times)}, "front": None}
    if sweep:
        teacher_pts = [p for p in sweep["points"] if p["model"] == "teacher"]
        out["front"] = against_front(teacher_pts, rows, front_n)
        if cfg.confirm_front and front_n < len(seeds) and teacher_config is not None:
            rescore = _rescorer(models["teacher"], main_sched, teacher_fid, teacher_config, seeds, shape, cfg, extractor,
                                ref, device, progress)
            confirmed = confirm_equal_fid(pareto_front(teacher_pts), rows, rescore)
            out["front"]["confirmed"] = {"n": len(seeds), "points": confirmed}
    return out, panels


def _rescorer(unet, main_sched, main_fid: float, teacher_config: dict, seeds, shape, cfg, extractor, ref, device,
              progress: bool = True):
    """point -> the teacher's FID at that (scheduler, steps) on the main seeds; the main setting is the main table's."""
    def rescore(p: dict) -> float:
        sched, _ = scheduler_for(p["scheduler"], p["steps"], p.get("timestep_spacing", cfg.sampler.timestep_spacing),
                                 teacher_config)
        if same_sampler(sched, main_sched):
            return main_fid
        bar = progress_bar(len(seeds), "confirm front", disable=not progress, unit="img")
        fid = measure(unet_fn(unet), sched, seeds, shape, cfg.batch_size, extractor, ref, device=device, bar=bar,
                      label=("teacher", f"{p['scheduler']}-{p['steps']}"))[0]["fid"]
        bar.close()
        return fid
    return rescore


def against_front(teacher_pts: list[dict], rows: list[dict], n: int) -> dict:
    """Per student setting: the teacher's best FID in no more time, and the teacher's cheapest setting reaching the
    student's FID (speed-up at equal FID); plus the Pareto front of the teacher alone and of everything together."""
    pts = [{"model": r["model"], "scheduler": r["scheduler"], "steps": r["steps"], "fid": r["front_fid"],
            "seconds_per_image": r["seconds_per_image"], "own": True} for r in rows]
    for r in rows:
        faster = [p for p in teacher_pts if p["seconds_per_image"] <= r["seconds_per_image"]]
        best = min(faster, key=lambda p: p["fid"]) if faster else None
        r["teacher_same_time"] = _brief(best)
        eq = cheapest_reaching(teacher_pts, r["front_fid"])
        r["equal_fid"] = ({**_brief(eq), "speedup": eq["seconds_per_image"] / r["seconds_per_image"]} if eq else None)
        if eq is None and teacher_pts:  # the teacher never gets there: its best FID's time bounds the speed-up below
            top = min(teacher_pts, key=lambda p: p["fid"])
            r["equal_fid_lower_bound"] = {**_brief(top), "speedup": top["seconds_per_image"] / r["seconds_per_image"]}
    return {"n": n, "n_teacher": teacher_pts[0]["n"] if teacher_pts else None, "teacher_points": len(teacher_pts), "teacher_front": pareto_front(teacher_pts),
            "front": pareto_front(teacher_pts + pts), "student_points": pts}


def _brief(p: dict | None) -> dict | None:
    return None if p is None else {k: p[k] for k in ("scheduler", "steps", "fid", "seconds_per_image")}
