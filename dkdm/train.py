"""Plain data-based diffusion training: the embedded digits teacher, and the distiller's data baseline.

A spec with `learned_variance` trains an IDDPM-style teacher (Nichol & Dhariwal 2021): eps MSE plus
`vlb_weight` x the sampled variational-bound term in bits (the hybrid loss; weight 1 per term = IDDPM's
λ = 0.001 on the sum over T = 1000 terms), saved with `variance_type = "learned_range"`."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from . import config as cfgmod
from .config import SamplerConfig, TrainConfig
from .data.digits import load_digits_images
from .distill.losses import vlb_term
from .imaging import grid, save_png
from .progress import progress_bar
from .runtime import accelerator, atomic_write_json, positive
from .sampling import sample, unet_fn
from .schedulers import make_scheduler
from .students import build_unet, count_params


def train_teacher(cfg: TrainConfig, images: torch.Tensor | None = None, progress: bool = True) -> dict:
    """Train a UNet on real images with the epsilon objective; save it in the DDPMPipeline layout."""
    positive("steps", cfg.steps)
    positive("batch_size", cfg.batch_size)
    torch.manual_seed(cfg.seed)
    acc = accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    if images is None:
        images, _ = load_digits_images(cfg.model.sample_size)
    unet = build_unet(cfg.model)
    channels = cfg.model.in_channels
    learned = unet.config.out_channels == 2 * channels
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                variance_type="learned_range" if learned else "fixed_small")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    # diffusers' warm-up: linear from 0 over warmup_steps, then constant (the step-0 lr is 0, as in its scripts)
    lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=cfg.warmup_steps)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    unet, opt = acc.prepare(unet, opt)
    ema.to(acc.device)
    data = images.to(acc.device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    losses, parts, t0 = [], {"mse": [], "vlb": []}, time.time()
    bar = progress_bar(cfg.steps, "train", disable=not progress)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen).to(acc.device)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen).to(acc.device)
        x_t = noise_sched.add_noise(x0, noise, t)
        pred = unet(x_t, t).sample
        mse = F.mse_loss(pred[:, :channels], noise)
        loss = mse
        parts["mse"].append(mse.item())
        if learned:
            vlb = vlb_term(pred, x0, x_t, t, noise_sched, channels)
            loss = loss + cfg.vlb_weight * vlb
            parts["vlb"].append(vlb.item())
        acc.backward(loss)
        acc.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        losses.append(loss.item())
        bar.update(1, loss=sum(losses[-50:]) / len(losses[-50:]),
                   **({"vlb": sum(parts["vlb"][-50:]) / len(parts["vlb"][-50:])} if learned else {}))
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
        # the loss parts (eps MSE; the variational-bound term in bits/dim for learned variance), last 100 steps
        "final_parts": {k: sum(v[-100:]) / len(v[-100:]) for k, v in parts.items() if v},
        "vlb_first": sum(parts["vlb"][:20]) / len(parts["vlb"][:20]) if parts["vlb"] else None,
        "variance_type": noise_sched.config.variance_type,
        "seconds": time.time() - t0,
        "params": count_params(final),
        "config": cfgmod.to_dict(cfg),
    }
    atomic_write_json(out / "train_summary.json", summary)
    return summary
