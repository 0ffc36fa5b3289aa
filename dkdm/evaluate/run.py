"""`dkdm evaluate`: same seeds, same scheduler and steps for the teacher and every student."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import config as cfgmod
from ..config import EvaluateConfig
from ..errors import DkdmError
from ..imaging import save_png, side_by_side
from ..own_sampler import noise_config
from ..progress import progress_bar
from ..runtime import atomic_write_bytes, atomic_write_json, check_world, pick_device, positive
from ..sampling import sample_many, unet_fn
from ..schedulers import KINDS, make_scheduler
from ..students import count_params
from ..teacher import load_teacher
from . import metrics, plots
from .embeddings import embed
from .energy import open_counter
from .fewstep import evaluate_own
from .features import extract, load_extractor
from .models import load_student_unet, student_name
from .overlap import check_seed_overlap, noise_seeds, seed_rule
from .paired import is_deterministic, paired_scores
from .reference import real_reference, teacher_reference
from .report_md import render_markdown
from .speed import flops_per_step, speed_report, time_sampling, weights_bytes
from .sweep import cheapest_reaching, pareto_front, run_sweep, scheduler_for


def _check(cfg: EvaluateConfig) -> None:
    positive("num_samples", cfg.num_samples)
    positive("batch_size", cfg.batch_size)
    positive("speed_repeats", cfg.speed_repeats)
    for bs in cfg.speed_batch_sizes:
        positive("speed batch size", bs)
    if cfg.num_samples < 2:
        raise DkdmError("num_samples must be at least 2 (FID needs a covariance)")
    if not cfg.students:
        raise DkdmError("give at least one --student folder to compare with the teacher")
    if cfg.seed < 0:
        raise DkdmError(f"--seed must be >= 0 (the first evaluation sample index), got {cfg.seed}")
    bad = [s for s in cfg.sweep_schedulers if s not in KINDS]
    if bad:
        raise DkdmError(f"unknown sweep scheduler(s) {bad}; choose from {sorted(KINDS)}")
    if bool(cfg.sweep_schedulers) != bool(cfg.sweep_steps):
        raise DkdmError("a sweep needs both --sweep-schedulers and --sweep-steps")
    for s in cfg.sweep_steps:
        positive("sweep steps", s)
    if cfg.sweep_schedulers:
        positive("sweep_samples", cfg.sweep_samples)


def _sample(name, unet, sched, seeds, shape, cfg, device, progress, eta=None):
    bar = tqdm(total=len(seeds), desc=f"sample {name}", disable=not progress, unit="img")
    imgs = sample_many(unet_fn(unet), sched, seeds, shape, cfg.batch_size, eta=cfg.sampler.eta if eta is None else eta,
                       device=device, progress=bar.update)
    bar.close()
    return imgs


def evaluate(cfg: EvaluateConfig, progress: bool = True) -> dict:
    _check(cfg)
    check_world(1, "evaluate")
    n_seeds = max(cfg.num_samples, cfg.sweep_samples if cfg.sweep_schedulers else 0)
    overlaps = check_seed_overlap(cfg.students, cfg.seed_space, cfg.seed, n_seeds, cfg.allow_seed_overlap)
    t_start = time.time()
    device = pick_device(cfg.device)
    teacher = load_teacher(cfg.teacher, device)
    if teacher.latent:
        raise DkdmError(f"teacher {cfg.teacher} is a latent text-to-image pipeline: use `dkdm evaluate-t2i`")
    shape = teacher.sample_shape
    sched, spacing = scheduler_for(cfg.sampler.scheduler, cfg.sampler.steps, cfg.sampler.timestep_spacing, teacher.scheduler_config)
    if spacing != cfg.sampler.timestep_spacing:
        cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, timestep_spacing=spacing))
    steps = len(sched.timesteps)
    extractor = load_extractor(cfg.features, shape, cfg.inception or None, device=device)
    seeds = noise_seeds(cfg.seed_space, cfg.seed, cfg.num_samples)

    models, paths = {"teacher": teacher.unet}, {}
    for s in cfg.students:
        name = student_name(s)
        key = name if name not in models else s
        models[key], paths[key] = load_student_unet(s, device), s
    names = list(models)
    # a student predicting another quantity than the teacher (v for few-step students) samples the same kind, steps
    # and spacing through its own exported config
    configs = {n: noise_config(paths[n], teacher.scheduler_config) if n in paths else teacher.scheduler_config for n in names}
    scheds = {n: sched if configs[n] is teacher.scheduler_config else
              scheduler_for(cfg.sampler.scheduler, cfg.sampler.steps, spacing, configs[n])[0] for n in names}

    samples = {n: _sample(n, u, scheds[n], seeds, shape, cfg, device, progress) for n, u in models.items()}
    feats = {n: extract(extractor, x, n, progress=progress) for n, x in samples.items()}

    ref_spec = cfg.reference if cfg.reference != "auto" else ("digits" if shape == (1, 16, 16) else "teacher")
    if ref_spec == "teacher":  # data-free: the teacher's samples at other seeds are the reference
        ref_seeds = range(cfg.seed + cfg.num_samples, cfg.seed + 2 * cfg.num_samples)
        ref_imgs = _sample("teacher (reference seeds)", teacher.unet, sched,
                           noise_seeds(cfg.seed_space, ref_seeds.start, len(ref_seeds)), shape, cfg, device, progress)
        ref = teacher_reference(extract(extractor, ref_imgs, "reference", progress=progress), ref_seeds)
    else:
        if ref_spec == "digits" and shape[0] != 1:
            raise DkdmError(f"the digits reference is 1-channel; this teacher makes {shape} images: give --reference")
        ref = real_reference(ref_spec, extractor, shape, cfg.cache_root, cfg.reference_limit, progress=progress)

    # Paired fidelity needs a deterministic sampler: reuse the main samples when it is one, else resample with DDIM.
    if is_deterministic(cfg.sampler.scheduler, cfg.sampler.eta):
        paired_cfg, paired_imgs, paired_feats = cfg.sampler, samples, feats
    else:
        paired_cfg = cfgmod.SamplerConfig(scheduler="ddim", steps=cfg.sampler.steps, eta=0.0,
                                          timestep_spacing=cfg.sampler.timestep_spacing)
        paired_imgs = {n: _sample(f"{n} (paired, ddim)", u, make_scheduler(paired_cfg, configs[n]), seeds, shape, cfg, device,
                                  progress, eta=0.0)
                       for n, u in models.items()}
        paired_feats = {n: extract(extractor, x, f"{n} (paired)", progress=progress) for n, x in paired_imgs.items()}

    counter, energy_reason = open_counter(device)
    batch_sizes = list(dict.fromkeys(cfg.speed_batch_sizes or [cfg.batch_size]))
    # the headline batch size is timed with the models taking turns, so the speed-up survives load swings
    main_times, main_joules = time_sampling({n: unet_fn(u) for n, u in models.items()}, scheds, shape, batch_sizes[0],
                                            cfg.speed_repeats, device=device, counter=counter)
    results = {}
    for n, unet in models.items():
        fps = flops_per_step(unet, shape, device)
        r = {
            "fid": ref.fid(feats[n]),
            "kid": ref.kid(feats[n]),
            "params": count_params(unet),
            "weights_bytes": weights_bytes(unet),
            "flops_per_step": fps,
            "flops_per_image": fps * steps,
            **speed_report(unet_fn(unet), scheds[n], shape, batch_sizes, cfg.speed_repeats, device=device,
                           counter=counter, energy_reason=energy_reason, main=(main_times[n], main_joules[n])),
        }
        if n != "teacher":
            r["fid_vs_teacher"] = metrics.fid(feats[n], feats["teacher"])
            r["kid_vs_teacher"] = metrics.kid(feats[n], feats["teacher"])
            r["paired"] = paired_scores(paired_imgs["teacher"], paired_imgs[n], paired_feats["teacher"], paired_feats[n])
        results[n] = r

    sweep = None
    if cfg.sweep_schedulers:
        sweep_seeds = noise_seeds(cfg.seed_space, cfg.seed, cfg.sweep_samples)  # a prefix of the main seeds
        swept = {n: unet_fn(u) for n, u in models.items() if cfg.sweep_students or n == "teacher"}
        points = run_sweep(swept, teacher.scheduler_config, cfg.sweep_schedulers,
                           cfg.sweep_steps, sweep_seeds, shape, cfg.batch_size, extractor, ref, counter=counter, configs=configs,
                           timestep_spacing=cfg.sampler.timestep_spacing, device=device, progress=progress)
        # Sweep FIDs use fewer samples (biased upwards): the default target comes from the sweep itself.
        target = cfg.target_fid or 1.25 * min(p["fid"] for p in points if p["model"] == "teacher")
        has_energy = all(p["joules_per_image"] is not None for p in points)
        sweep = {
            "samples": cfg.sweep_samples, "seeds": [cfg.seed, cfg.seed + cfg.sweep_samples - 1], "batch_size": cfg.batch_size,
            "points": points, "target_fid": target,
            "target_rule": "given" if cfg.target_fid else "1.25 x the teacher's best FID in the sweep",
            "pareto_time": pareto_front(points, "seconds_per_image"),
            "cheapest_time": cheapest_reaching(points, target, "seconds_per_image"),
            "pareto_energy": pareto_front(points, "joules_per_image") if has_energy else None,
            "cheapest_energy": cheapest_reaching(points, target, "joules_per_image") if has_energy else None,
            "energy": {"available": has_energy, "reason": None if has_energy else energy_reason},
        }

    # few-step students: each at its own scheduler and steps, against DDIM-25 and the teacher's front (fewstep.py)
    main = {"scheds": scheds, "feats": feats, "times": main_times}  # an own setting equal to the main one is reused
    own, own_grid = evaluate_own(models, paths, sched, results["teacher"]["fid"], seeds, shape, cfg, extractor, ref, sweep,
                                 device, progress, main=main, teacher_config=teacher.scheduler_config) \
        if cfg.own_samplers else (None, [])

    emb = None
    if cfg.embeddings:
        groups = ({"real": ref.feats} if ref.feats is not None and ref.kind != "teacher" else {}) | feats
        emb = embed(groups, cfg.embedding_points, seed=0)

    first = names[1]
    report = {
        "teacher": results["teacher"],
        "student": results[first],
        "students": {n: results[n] for n in names[1:]},
        "speedup": results[first]["images_per_s"] / results["teacher"]["images_per_s"],
        "speedups": {n: results[n]["images_per_s"] / results["teacher"]["images_per_s"] for n in names[1:]},
        # per round, teacher seconds / student seconds of back-to-back runs: the spread shows how steady the machine was
        "speedups_per_round": {n: [a / b for a, b in zip(main_times["teacher"], main_times[n])] for n in names[1:]},
        "fid_ratio": results[first]["fid"] / results["teacher"]["fid"] if results["teacher"]["fid"] else None,
        "sampler": {**cfgmod.to_dict(cfg.sampler), "class": type(sched).__name__},
        "paired_sampler": {**cfgmod.to_dict(paired_cfg), "reused_main_samples": paired_cfg is cfg.sampler},
        "num_samples": cfg.num_samples,
        "seeds": [cfg.seed, cfg.seed + cfg.num_samples - 1],
        "seed_space": cfg.seed_space,
        "seed_rule": seed_rule(cfg.seed_space),
        "seed_overlap": overlaps,  # evaluation samples per student that start from one of its training trajectories
        "reference": {"name": ref.name, "kind": ref.kind, "n": ref.n, "statistics_file": ref.cached,
                      "kid_available": ref.feats is not None},
        "feature_extractor": extractor.name,
        "feature_extractor_fingerprint": extractor.fingerprint,
        "energy": {"available": counter is not None, "counter": counter.name if counter else None, "reason": energy_reason},
        "sweep": sweep,
        "fewstep": own,
        "embeddings": None if emb is None else {"groups": {g: emb["labels"].count(g) for g in dict.fromkeys(emb["labels"])},
                                                "pca_explained_variance_ratio": emb["pca_explained_variance_ratio"],
                                                "tsne_perplexity": emb["tsne_perplexity"]},
        "machine": {"device": str(device), "platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "date": time.strftime("%Y-%m-%d"),
        "seconds": None,
        "config": cfgmod.to_dict(dataclasses.replace(cfg)),
    }
    report["seconds"] = time.time() - t_start
    write_report(report, samples, emb, Path(cfg.out), own_grid)
    return report


def write_report(report: dict, samples: dict, emb: dict | None, out: Path, own_grid: list = ()) -> None:
    pngs = {"samples": "samples_side_by_side.png"}
    if own_grid:  # same seeds: the teacher at the main setting | each student at each of its own settings
        save_png(side_by_side(list(own_grid), ncol=4, scale=4), out / "fewstep_grid.png")
        pngs["fewstep_grid"] = "fewstep_grid.png"
    save_png(side_by_side([(n, x[:64]) for n, x in samples.items()], ncol=8, scale=4), out / pngs["samples"])
    plots.paired_hist({n: s["paired"]["pixel_rmse_per_seed"] for n, s in report["students"].items()}, out / "paired_fidelity.png")
    pngs["paired"] = "paired_fidelity.png"
    sw = report["sweep"]
    if sw:
        plots.quality_vs_steps(sw["points"], out / "quality_vs_steps.png")
        plots.pareto(sw["points"], sw["pareto_time"], out / "pareto_time.png", "seconds_per_image",
                     f"seconds per image (batch {sw['batch_size']}, {report['machine']['device']})", sw["target_fid"])
        pngs |= {"quality_vs_steps": "quality_vs_steps.png", "pareto_time": "pareto_time.png"}
        if sw["pareto_energy"]:
            plots.pareto(sw["points"], sw["pareto_energy"], out / "pareto_energy.png", "joules_per_image",
                         "joules per image", sw["target_fid"])
            pngs["pareto_energy"] = "pareto_energy.png"
    if report.get("fewstep") and report["fewstep"]["front"]:
        plots.fewstep_front([p for p in sw["points"] if p["model"] == "teacher"], report["fewstep"], out / "pareto_fewstep.png",
                            f"seconds per image (batch {report['config']['batch_size']}, {report['machine']['device']})")
        pngs["pareto_fewstep"] = "pareto_fewstep.png"
    if emb is not None:
        plots.embedding(emb, "pca", out / "features_pca.png", f"PCA of {report['feature_extractor']} features")
        plots.embedding(emb, "tsne", out / "features_tsne.png", f"t-SNE of {report['feature_extractor']} features")
        pngs |= {"pca": "features_pca.png", "tsne": "features_tsne.png"}
    report["pngs"] = pngs
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", render_markdown(report).encode())
