"""`dkdm evaluate-t2i`: teacher and student pipelines on the same prompts and seeds, decoded through the VAE:
FID/KID against real images, prompt adherence (digits classifier; CLIP score with --clip), guidance sweeps,
speed of the U-Net part and end to end, FLOPs per image (VAE decode and text encoding counted once)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..cache.embeddings import read_prompts
from ..config import EvaluateConfig
from ..errors import DkdmError
from ..latent import generate_images, pipeline_with, vae_info
from ..own_sampler import own_sampling, own_scheduler
from ..runtime import atomic_write_bytes, atomic_write_json, pick_device, positive
from ..schedulers import stable_scheduler
from ..teacher import load_teacher
from . import energy as energymod
from .models import student_name
from .overlap import check_seed_overlap, noise_seeds, seed_rule

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_named(prompt: str) -> int | None:
    """The one digit a prompt names ("a handwritten seven", "digit 7"), else None."""
    found = {WORDS.index(w) for w in re.findall(r"[a-z]+", prompt.lower()) if w in WORDS}
    found |= {int(d) for d in re.findall(r"(?<![0-9])[0-9](?![0-9])", prompt)}
    return found.pop() if len(found) == 1 else None


def load_student_pipeline(path: str, teacher, device):
    """A student exported by `dkdm distill` from a latent teacher: a full StableDiffusionPipeline folder."""
    from diffusers import StableDiffusionPipeline

    p = Path(path)
    p = p / "student" if (p / "student" / "model_index.json").is_file() else p
    if not (p / "model_index.json").is_file() or not (p / "vae").is_dir():
        raise DkdmError(f"student {path!r} is not a pipeline folder (model_index.json, unet/, vae/...): "
                        "distil it from a latent teacher's cache with `dkdm distill`")
    pipe = StableDiffusionPipeline.from_pretrained(str(p), safety_checker=None, requires_safety_checker=False,
                                                   use_safetensors=True)
    if vae_info(pipe.vae)["fingerprint"] != vae_info(teacher.vae)["fingerprint"]:
        raise DkdmError(f"student {path!r} decodes with another VAE than teacher {teacher.source}; images would not compare")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class UNetClock:
    """Seconds spent inside the U-Net's forward, via hooks: the U-Net part of end-to-end time."""

    def __init__(self, unet):
        self.seconds, self._t = 0.0, 0.0
        self._h = [unet.register_forward_pre_hook(self._pre), unet.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._t = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._t

    def close(self):
        for h in self._h:
            h.remove()


def _images(pipe, prompts, seeds, g, steps, batch, bar=None) -> torch.Tensor:
    out = []
    for i in range(0, len(seeds), batch):
        out.append(generate_images(pipe, prompts[i:i + batch], seeds[i:i + batch], g, steps))
        if bar is not None:
            bar.update(len(out[-1]))
    return torch.cat(out)


@torch.no_grad()
def adherence(images: torch.Tensor, labels: list[int | None]) -> dict | None:
    """Share of images the digits classifier reads as the digit their prompt names (the analogue of CLIP score)."""
    if tuple(images.shape[1:]) != (1, 16, 16) or any(lab is None for lab in labels):
        return None
    from .digits_features import load_digits_extractor

    pred = load_digits_extractor()(images).argmax(1)
    y = torch.tensor(labels)
    per = {str(c): float((pred[y == c] == c).float().mean()) for c in sorted(set(labels))}
    return {"accuracy": float((pred == y).float().mean()), "per_class": per, "samples": len(labels)}


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], clip_path: str) -> float:
    """CLIPScore (Hessel et al. 2021): 100 * max(cos(image, text), 0), averaged; images resized to the CLIP input."""
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(clip_path, use_safetensors=True).eval()
        tok = AutoTokenizer.from_pretrained(clip_path)
    except OSError as exc:
        raise DkdmError(f"--clip {clip_path!r} is not a CLIP model folder (config.json, weights, tokenizer): {exc}") from exc
    size = model.config.vision_config.image_size
    x = (images.float() + 1) / 2
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    img = model.get_image_features(pixel_values=(x - mean) / std)
    ids = tok(prompts, padding=True, truncation=True, return_tensors="pt")
    txt = model.get_text_features(**ids)
    img, txt = (getattr(o, "pooler_output", o) for o in (img, txt))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return float(100 * cos.clamp(min=0).mean())


@torch.no_grad()
def flops_per_image(pipe, steps: int, guidance: float) -> dict:
    """U-Net FLOPs x steps (x2 with guidance), plus one VAE decode and the prompt (and "") encodings."""
    unet, dev = pipe.unet, pipe.device
    c, s = unet.config.in_channels, unet.config.sample_size
    calls = 2 if guidance > 1 else 1
    tok = pipe.tokenizer(["a"], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    with FlopCounterMode(display=False) as fc:
        emb = pipe.text_encoder(tok.input_ids.to(dev))[0]
    text = int(fc.get_total_flops()) * calls
    with FlopCounterMode(display=False) as fc:
        unet(torch.zeros(1, c, s, s, device=dev), torch.tensor([500], device=dev), encoder_hidden_states=emb)
    per_call = int(fc.get_total_flops())
    with FlopCounterMode(display=False) as fc:
        pipe.vae.decode(torch.zeros(1, c, s, s, device=dev))
    vae = int(fc.get_total_flops())
    return {"unet": per_call * calls * steps, "text_encoder": text, "vae_decode": vae,
            "total": per_call * calls * steps + text + vae}


def time_pipelines(pipes: dict, prompts, seeds, g, steps, repeats: int, device) -> dict:
    """Per-image seconds, U-Net part and end to end, the models taking turns in each round (fair under load).
    `g`, `steps`: one value for all, or a dict with each model's own (few-step students)."""
    g_of = g if isinstance(g, dict) else dict.fromkeys(pipes, g)
    steps_of = steps if isinstance(steps, dict) else dict.fromkeys(pipes, steps)
    clocks = {k: UNetClock(p.unet) for k, p in pipes.items()}
    counter, why = energymod.open_counter(device)
    rows = {k: {"e2e": [], "unet": [], "joules": 0.0} for k in pipes}
    try:
        for k, p in pipes.items():  # warm-up
            generate_images(p, prompts, seeds, g_of[k], steps_of[k])
        for _ in range(repeats):
            for k, p in pipes.items():
                clocks[k].seconds = 0.0
                token = counter.start() if counter else None
                t0 = time.perf_counter()
                generate_images(p, prompts, seeds, g_of[k], steps_of[k])
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize(device)
                rows[k]["e2e"].append((time.perf_counter() - t0) / len(seeds))
                rows[k]["unet"].append(clocks[k].seconds / len(seeds))
                if counter:
                    rows[k]["joules"] += counter.stop(token)
    finally:
        for c in clocks.values():
            c.close()
    out = {}
    for k, r in rows.items():
        e = {"available": True, "counter": counter.name, "joules_per_image": r["joules"] / (repeats * len(seeds))} \
            if counter else energymod.unavailable(why)
        out[k] = {"e2e_s_per_image": float(np.median(r["e2e"])), "unet_s_per_image": float(np.median(r["unet"])),
                  "rounds_e2e": r["e2e"], "rounds_unet": r["unet"], "energy": e}
    teacher = rows["teacher"]
    for k, r in rows.items():  # speed-up per round: the models ran back to back, under the same load
        out[k]["speedup_e2e"] = float(np.median([a / b for a, b in zip(teacher["e2e"], r["e2e"])]))
        out[k]["speedup_unet"] = float(np.median([a / b for a, b in zip(teacher["unet"], r["unet"])]))
    return out


def evaluate_t2i(cfg: EvaluateConfig, prompts_file: str, guidance_scale: float, sweep_guidance: list[float] | None = None,
                 sweep_samples: int | None = None, clip: str = "", progress: bool = True) -> dict:
    """Sample teacher and students on the same prompts and seeds; write report.json, report.md and PNG grids."""
    for name in ("num_samples", "batch_size", "speed_repeats"):
        positive(name, getattr(cfg, name))
    if guidance_scale < 1:
        raise DkdmError(f"--guidance-scale must be >= 1 (1 = no guidance), got {guidance_scale}")
    n = cfg.num_samples
    overlaps = check_seed_overlap(cfg.students, cfg.seed_space, cfg.seed, n, cfg.allow_seed_overlap)  # sweeps: a prefix
    device = pick_device(cfg.device)
    teacher = load_teacher(cfg.teacher, device)
    if not teacher.latent:
        raise DkdmError(f"teacher {cfg.teacher} is not a latent text-to-image pipeline (unet/, vae/, text_encoder/); "
                        "use `dkdm evaluate`")
    prompts = read_prompts(prompts_file)
    out = Path(cfg.out)
    steps = cfg.sampler.steps
    pipes = {"teacher": pipeline_with(teacher.unet, teacher, stable_scheduler(cfg.sampler, teacher.scheduler_config)[0])}
    # each model's (guidance, steps, scheduler): the main ones, or a few-step student's own from its card
    own = {"teacher": (guidance_scale, steps, cfg.sampler.scheduler)}
    for s in cfg.students:
        pipe = load_student_pipeline(s, teacher, device)
        card = own_sampling(s) if cfg.own_samplers else None
        if card is not None and card["objective"] != "eps":  # its exported scheduler, at the steps it was made for
            pipe.scheduler = own_scheduler(s, card["steps"])
            g = card["guidance_scale"] if card["guidance_scale"] is not None else guidance_scale
            own[student_name(s)] = (g, card["steps"], card["scheduler"])
        else:
            pipe.scheduler = stable_scheduler(cfg.sampler, teacher.scheduler_config)[0]  # same sampler for every model
            own[student_name(s)] = own["teacher"]
        pipes[student_name(s)] = pipe
    ps = [prompts[i % len(prompts)] for i in range(n)]
    seeds = noise_seeds(cfg.seed_space, cfg.seed, n)  # `dkdm evaluate`'s rule: apart from every cache trajectory
    labels = [digit_named(p) for p in ps]
    bar = tqdm(total=n * len(pipes), desc="evaluate-t2i", disable=not progress, unit="img")
    images = {k: _images(p, ps, seeds, own[k][0], own[k][1], cfg.batch_size, bar) for k, p in pipes.items()}
    bar.close()
    shape = tuple(images["teacher"].shape[1:])
    fid_of = _fid_fn(cfg, shape, device, progress)
    models = {}
    for k, imgs in images.items():
        m = {"adherence": adherence(imgs, labels), **fid_of(imgs), "params_unet": sum(p.numel() for p in pipes[k].unet.parameters()),
             "flops_per_image": flops_per_image(pipes[k], own[k][1], own[k][0]),
             "sampler": {"scheduler": own[k][2], "steps": own[k][1], "guidance_scale": own[k][0]}}
        if clip:
            m["clip_score"] = clip_score(imgs, ps, clip)
        models[k] = m
    speed_n = min(cfg.batch_size, n)
    speed = time_pipelines(pipes, ps[:speed_n], seeds[:speed_n], {k: v[0] for k, v in own.items()},
                           {k: v[1] for k, v in own.items()}, cfg.speed_repeats, device)
    for k in models:
        models[k]["speed"] = speed[k]
    sweep = []
    for g in sweep_guidance or []:
        k_n = sweep_samples or min(n, 256)
        for k, p in pipes.items():
            imgs = _images(p, ps[:k_n], seeds[:k_n], g, own[k][1], cfg.batch_size)
            sweep.append({"model": k, "guidance_scale": g, "samples": k_n, "adherence": adherence(imgs, labels[:k_n]),
                          **fid_of(imgs)})
    report = {"teacher": teacher.source, "vae": vae_info(teacher.vae), "prompts": {"file": prompts_file, "count": len(prompts),
              "rule": f"sample i: prompt i mod count; {seed_rule(cfg.seed_space)}"}, "guidance_scale": guidance_scale,
              "seed_space": cfg.seed_space, "seed_overlap": overlaps,
              "sampler": {"scheduler": cfg.sampler.scheduler, "steps": steps, "spacing": cfg.sampler.timestep_spacing},
              "num_samples": n, "seed": cfg.seed, "speed_batch": speed_n, "threads": torch.get_num_threads(),
              "device": str(device), "models": models, "guidance_sweep": sweep}
    out.mkdir(parents=True, exist_ok=True)
    _grids(images, prompts, out)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", render(report).encode())
    return report


def _fid_fn(cfg: EvaluateConfig, shape, device, progress):
    """FID/KID against real images (digits for 1x16x16 images, or --reference), None when there is no reference."""
    from .features import extract, load_extractor
    from .reference import real_reference

    spec = "digits" if cfg.reference == "auto" and shape == (1, 16, 16) else cfg.reference
    if spec in ("auto", "teacher"):
        return lambda imgs: {"fid": None, "kid": None, "reference": None}
    ext = load_extractor(cfg.features, shape, cfg.inception, device)
    ref = real_reference(spec, ext, shape, cfg.cache_root, cfg.reference_limit, progress=False)

    def f(imgs):
        feats = extract(ext, imgs, "samples", progress=False)
        return {"fid": ref.fid(feats), "kid": ref.kid(feats), "reference": ref.name}

    return f


def _grids(images: dict, prompts: list[str], out: Path) -> None:
    """One PNG per model and a side-by-side: column j = prompt j, rows = seeds (the same cells across models)."""
    from ..imaging import grid, save_png, side_by_side

    ncol = min(len(prompts), 10)
    k = min(len(images["teacher"]), ncol * 8)
    for name, imgs in images.items():
        save_png(grid(imgs[:k], ncol=ncol, scale=4), out / f"samples_{name}.png")
    save_png(side_by_side([(n, x[:k]) for n, x in images.items()], ncol=ncol, scale=4), out / "samples_side_by_side.png")


def render(r: dict) -> str:
    def f(v, fmt=".2f"):
        return "n/a" if v is None else format(v, fmt)

    lines = [f"# Text-to-image evaluation: {r['teacher']}", "",
             f"{r['num_samples']} samples per model, prompts from `{r['prompts']['file']}` ({r['prompts']['rule']}), "
             f"guidance {r['guidance_scale']}, {r['sampler']['scheduler']}-{r['sampler']['steps']} "
             f"({r['sampler']['spacing']}), {r['device']}, {r['threads']} threads. Speed: batch {r['speed_batch']}, "
             "median over rounds in which the models take turns.", "",
             "| model | U-Net params | adherence | FID | KID | U-Net s/img | end-to-end s/img | U-Net speed-up | end-to-end speed-up | GFLOPs/img |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k, m in r["models"].items():
        a = m["adherence"]["accuracy"] * 100 if m["adherence"] else None
        s = m["speed"]
        own = m.get("sampler", {})
        if own and (own["steps"], own["scheduler"]) != (r["sampler"]["steps"], r["sampler"]["scheduler"]):
            k = f"{k} ({own['scheduler']}-{own['steps']}, guidance {own['guidance_scale']:g})"  # its own sampler
        lines.append(f"| {k} | {m['params_unet'] / 1e6:.2f} M | {f(a, '.1f')}% | {f(m['fid'])} | {f(m['kid'], '.4f')} | "
                     f"{s['unet_s_per_image'] * 1e3:.2f} ms | {s['e2e_s_per_image'] * 1e3:.2f} ms | {s['speedup_unet']:.2f}x | "
                     f"{s['speedup_e2e']:.2f}x | {m['flops_per_image']['total'] / 1e9:.3f} |")
    if any("clip_score" in m for m in r["models"].values()):
        lines += ["", "CLIP score: " + ", ".join(f"{k} {m['clip_score']:.2f}" for k, m in r["models"].items())]
    if r["guidance_sweep"]:
        lines += ["", "## Guidance sweep", "", "| model | guidance | samples | adherence | FID |", "|---|---|---|---|---|"]
        for row in r["guidance_sweep"]:
            a = row["adherence"]["accuracy"] * 100 if row["adherence"] else None
            lines.append(f"| {row['model']} | {row['guidance_scale']} | {row['samples']} | {f(a, '.1f')}% | {f(row['fid'])} |")
    lines += ["", "![samples](samples_side_by_side.png)", ""]
    return "\n".join(lines)
