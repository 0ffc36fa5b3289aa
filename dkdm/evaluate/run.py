"""`dkdm evaluate`: same seeds, same scheduler and steps for the teacher and every student."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from .. import config as cfgmod
from ..config import EvaluateConfig
from ..data.digits import load_digits_images
from ..errors import DkdmError
from ..imaging import save_png, side_by_side
from ..progress import progress_bar
from ..runtime import atomic_write_bytes, atomic_write_json, pick_device, positive
from ..sampling import sample_many, unet_fn
from ..schedulers import make_scheduler
from ..students import count_params
from ..teacher import load_teacher
from . import metrics
from .digits_features import DigitsFeatures
from .models import load_student_unet, student_name
from .speed import flops_per_step, speed_report


def evaluate(cfg: EvaluateConfig, progress: bool = True) -> dict:
    positive("num_samples", cfg.num_samples)
    positive("batch_size", cfg.batch_size)
    positive("speed_repeats", cfg.speed_repeats)
    if not cfg.students:
        raise DkdmError("give at least one --student folder to compare with the teacher")
    device = pick_device(cfg.device)
    teacher = load_teacher(cfg.teacher, device)
    shape = teacher.sample_shape
    if shape != (1, 16, 16):
        raise DkdmError(f"the digits feature extractor needs 1x16x16 images; this teacher makes {shape}")
    sched = make_scheduler(cfg.sampler, teacher.scheduler_config)
    steps = len(sched.timesteps)
    extractor = DigitsFeatures(device="cpu")
    real, _ = load_digits_images(16)
    real_feats = extractor(real)
    seeds = range(cfg.seed, cfg.seed + cfg.num_samples)

    models = {"teacher": teacher.unet}
    for s in cfg.students:
        name = student_name(s)
        models[name if name not in models else s] = load_student_unet(s, device)

    results, samples = {}, {}
    for name, unet in models.items():
        bar = progress_bar(cfg.num_samples, f"sample {name}", disable=not progress, unit="img")
        imgs = sample_many(unet_fn(unet), sched, seeds, shape, cfg.batch_size, device=device, progress=bar.update)
        bar.close()
        samples[name] = imgs
        feats = extractor(imgs)
        fps = flops_per_step(unet, shape, device)
        results[name] = {
            "fid": metrics.fid(feats, real_feats),
            "kid": metrics.kid(feats, real_feats),
            "params": count_params(unet),
            "flops_per_step": fps,
            "flops_per_image": fps * steps,
            **speed_report(unet_fn(unet), sched, shape, cfg.batch_size, cfg.speed_repeats, device=device),
        }
    names = list(models)
    first = names[1]
    report = {
        "teacher": results["teacher"],
        "student": results[first],
        "students": {n: results[n] for n in names[1:]},
        "speedup": results[first]["images_per_s"] / results["teacher"]["images_per_s"],
        "speedups": {n: results[n]["images_per_s"] / results["teacher"]["images_per_s"] for n in names[1:]},
        "fid_ratio": results[first]["fid"] / results["teacher"]["fid"],
        "sampler": {**cfgmod.to_dict(cfg.sampler), "class": type(sched).__name__},
        "num_samples": cfg.num_samples,
        "seeds": [cfg.seed, cfg.seed + cfg.num_samples - 1],
        "reference": {"name": "sklearn digits (all 1,797 real images, 16x16)", "n": len(real)},
        "feature_extractor": extractor.name,
        "machine": {"device": str(device), "platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "config": cfgmod.to_dict(cfg),
    }
    write_report(report, samples, Path(cfg.out))
    return report


def write_report(report: dict, samples: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    panels = [(n, x[:64]) for n, x in samples.items()]
    save_png(side_by_side(panels, ncol=8, scale=4), out / "samples_side_by_side.png")
    atomic_write_bytes(out / "report.md", render_markdown(report).encode())


def render_markdown(report: dict) -> str:
    rows = [("teacher", report["teacher"])] + list(report["students"].items())
    lines = [
        "# dkdm evaluation report",
        "",
        f"Sampler: {report['sampler']['class']} with {report['sampler']['steps']} steps; {report['num_samples']} samples, "
        f"seeds {report['seeds'][0]}..{report['seeds'][1]} for every model; reference: {report['reference']['name']}; "
        f"features: {report['feature_extractor']}. Machine: {report['machine']['device']}, {report['machine']['platform']}, "
        f"{report['date']}.",
        "",
        "| model | FID ↓ | KID ↓ | images/s | speed-up | latency b=1 p50 (ms) | params | GFLOPs/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    t_ips = report["teacher"]["images_per_s"]
    for name, r in rows:
        lines.append(f"| {name} | {r['fid']:.2f} | {r['kid']:.4f} | {r['images_per_s']:.1f} | {r['images_per_s'] / t_ips:.2f}x | "
                     f"{r['latency_b1_ms_p50']:.1f} | {r['params']:,} | {r['flops_per_image'] / 1e9:.3f} |")
    lines += ["", "![teacher | student, same seeds](samples_side_by_side.png)", ""]
    return "\n".join(lines)
