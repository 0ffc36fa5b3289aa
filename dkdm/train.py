"""Plain data-based diffusion training: the embedded digits teacher, and the distiller's data baseline."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.training_utils import EMAModel

from . import config as cfgmod
from .config import SamplerConfig, TrainConfig
from .data.digits import load_digits_images
from .imaging import grid, save_png
from .progress import progress_bar
from .runtime import accelerator, atomic_write_json, positive
from .sampling import sample, unet_fn
from .schedulers import make_scheduler
from .students import build_unet, count_params


def warmup_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


def train_teacher(cfg: TrainConfig, images: torch.Tensor | None = None, progress: bool = True) -> dict:
    """Train a UNet on real images with the epsilon objective; save it in the DDPMPipeline layout."""
    positive("steps", cfg.steps)
    positive("batch_size", cfg.batch_size)
    torch.manual_seed(cfg.seed)
    acc = accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    if images is None:
        images, _ = load_digits_images(cfg.model.sample_size)
    unet = build_unet(cfg.model)
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(cfg.warmup_steps))
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    unet, opt = acc.prepare(unet, opt)
    ema.to(acc.device)
    data = images.to(acc.device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    losses, t0 = [], time.time()
    bar = progress_bar(cfg.steps, "train", disable=not progress)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen).to(acc.device)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen).to(acc.device)
        pred = unet(noise_sched.add_noise(x0, noise, t), t).sample
        loss = F.mse_loss(pred, noise)
        acc.backward(loss)
        acc.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        losses.append(loss.item())
        bar.update(1, loss=sum(losses[-50:]) / len(losses[-50:]))
    bar.close()
    final = acc.unwrap_model(unet)
    ema.copy_to(final.parameters())
    out = Path(cfg.out)
    DDPMPipeline(unet=final, scheduler=noise_sched).save_pretrained(out, safe_serialization=True)
    # a visible check that the teacher works: 64 samples with the default sampler
    final.eval()
    sched = make_scheduler(SamplerConfig(), dict(noise_sched.config))
    imgs = sample(unet_fn(final), sched, range(64), (final.config.in_channels, cfg.model.sample_size, cfg.model.sample_size))
    save_png(grid(imgs, ncol=8, scale=4), out / "samples.png")
    summary = {
        "steps": cfg.steps,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "seconds": time.time() - t0,
        "params": count_params(final),
        "config": cfgmod.to_dict(cfg),
    }
    atomic_write_json(out / "train_summary.json", summary)
    return summary
