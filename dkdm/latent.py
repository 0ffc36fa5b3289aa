"""Latent (Stable-Diffusion-layout) teachers: the VAE's identity, paired guidance records, decoded grids,
and the student exported as a full StableDiffusionPipeline folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import DkdmError
from .teacher import load_teacher, load_vae, resolve_source, vae_info  # noqa: F401  (load_vae: callers import it here)

PIPELINE_PARTS = ("vae", "text_encoder", "tokenizer")  # copied from the teacher next to the student's unet/


def check_vae(manifest: dict, teacher, where: str) -> None:
    """Refuse a cache whose latents were made for another VAE than this teacher's (or for no VAE)."""
    cached = manifest.get("teacher", {}).get("vae")
    if teacher is None or not teacher.latent:
        return
    if cached is None:
        raise DkdmError(f"cache {where} holds pixel-space records, but teacher {teacher.source} is a latent (VAE) teacher")
    mine = vae_info(teacher.vae)
    if cached["fingerprint"] != mine["fingerprint"] or cached["scaling_factor"] != mine["scaling_factor"]:
        raise DkdmError(f"cache {where} holds latents of VAE {cached['fingerprint'][:12]}… (scaling {cached['scaling_factor']:.4g}), "
                        f"not of teacher {teacher.source}'s VAE {mine['fingerprint'][:12]}… (scaling "
                        f"{mine['scaling_factor']:.4g}); regenerate the cache with this teacher")


def latent_teacher_of(manifest: dict, teacher, device):
    """The teacher whose VAE and text parts a latent cache needs: the given one, else the one the manifest names."""
    if "vae" not in manifest.get("teacher", {}):
        return teacher
    if teacher is None:
        teacher = load_teacher(manifest["teacher"]["source"], device)
    return teacher


class PairedGuidance:
    """Walk with classifier-free guidance but keep the two unguided outputs, so a step becomes two records:
    (x_t, prompt row, eps_cond) and (x_t, "" row, eps_uncond). A student trained on them reproduces the
    guided walk at any guidance scale when its pipeline applies CFG (Ho & Salimans 2022, eq. 6) itself."""

    def __init__(self, cond, teacher, rows: np.ndarray, device):
        self.emb = cond.emb[torch.as_tensor(rows)].to(device)
        self.unc = cond.emb[cond.uncond_row].to(device).expand_as(self.emb)
        self.teacher, self.g, self.uncond_row = teacher, cond.guidance_scale, cond.uncond_row
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x, t):
        t2 = torch.cat([t, t]) if torch.is_tensor(t) and t.dim() > 0 else t  # per-sample t (coverage offsets)
        out_u, out_c = self.teacher(torch.cat([x, x]), t2, torch.cat([self.unc, self.emb])).chunk(2)
        self.last = (out_u, out_c)
        return out_u + self.g * (out_c - out_u)

    def records(self, rec, inp, dtype, t, i: int, trajs: np.ndarray, rows: np.ndarray):
        """One block: the prompt records of this step, then the "" records at the same x_t (block keys stay unique)."""
        out_u, out_c = self.last
        n = len(trajs)
        x = rec.to_storage(torch.cat([inp, inp]), dtype)
        return rec.RecordBatch(x_t=x, target=rec.to_storage(torch.cat([out_c, out_u]), dtype),
                               t=np.tile(np.broadcast_to(np.asarray(t, np.int64), (n,)), 2), traj=np.concatenate([trajs, trajs]),
                               step=np.full(2 * n, i, np.int64),
                               cond=np.concatenate([rows, np.full(n, self.uncond_row, np.int64)]))


def pipeline_with(unet, teacher, sched):
    """A StableDiffusionPipeline in memory: this U-Net with the teacher's VAE, text encoder and tokenizer."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                                   unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, steps: int) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) on CPU; one generator per image, so batching does not change them."""
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    img = pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens,
               output_type="pt").images
    channels = pipe.vae.config.out_channels
    return (img[:, :channels].float().cpu() * 2 - 1).clamp(-1, 1)


def save_decoded_grid(unet, teacher, sched, prompts: list[str], guidance_scale: float, path: Path, ncol: int = 8) -> None:
    """Sample grid decoded through the teacher's VAE: row r = prompt r, columns = seeds 0..ncol-1."""
    from .imaging import grid, save_png

    was_training = unet.training
    unet.eval()
    ps = [p for p in prompts for _ in range(ncol)]
    seeds = [j for _ in prompts for j in range(ncol)]
    img = generate_images(pipeline_with(unet, teacher, sched), ps, seeds, guidance_scale, sched.num_inference_steps)
    save_png(grid(img, ncol=ncol, scale=4), path)
    unet.train(was_training)


def add_pipeline_parts(student_dir: str | Path, teacher_source: str) -> Path:
    """Make an exported student folder a full StableDiffusionPipeline: copy the teacher's VAE, text encoder,
    tokenizer (bytes unchanged) and model_index.json next to the student's unet/ and scheduler/."""
    src, dst = Path(resolve_source(teacher_source)), Path(student_dir)
    for part in PIPELINE_PARTS:
        if not (src / part).is_dir():
            raise DkdmError(f"teacher {teacher_source} has no {part}/ folder; cannot export a full pipeline")
        tmp = Path(tempfile.mkdtemp(dir=dst, prefix=f".{part}."))
        shutil.copytree(src / part, tmp / part)
        if (dst / part).exists():
            shutil.rmtree(dst / part)
        (tmp / part).rename(dst / part)
        tmp.rmdir()
    _write_model_index(src, dst)
    return dst


def _write_model_index(src: Path, dst: Path) -> None:
    import json

    from .runtime import atomic_write_json

    index = json.loads((src / "model_index.json").read_text())
    sched_cls = json.loads((dst / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    index["scheduler"] = ["diffusers", sched_cls]
    index["safety_checker"], index["feature_extractor"] = [None, None], [None, None]
    index["requires_safety_checker"] = False
    atomic_write_json(dst / "model_index.json", index)


def is_latent_cache(reader) -> bool:
    return reader is not None and "vae" in reader.manifest.get("teacher", {})


def export_latent_student(unet, sched, reader, teacher, out: Path, device, guidance_scale: float | None = None) -> None:
    """After export_student: the teacher's parts next to unet/ (a full pipeline), and a decoded sample grid
    (at `guidance_scale`, default the cache's; 1 for a few-step student with the guidance baked in)."""
    from .cache.embeddings import read_embeddings

    lt = latent_teacher_of(reader.manifest, teacher, device)
    check_vae(reader.manifest, lt, reader.store.url)
    add_pipeline_parts(out / "student", lt.source)
    prompts = [p for p in read_embeddings(reader.store)["prompts"] if p][:8]
    g = float(reader.manifest["sampler"].get("guidance_scale", 1.0)) if guidance_scale is None else guidance_scale
    save_decoded_grid(unet, lt, sched, prompts, g, out / "student_samples.png")
