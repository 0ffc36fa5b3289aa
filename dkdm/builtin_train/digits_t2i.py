"""Train `builtin:digits-t2i`: a miniature Stable Diffusion (VAE, CLIP text encoder + tokenizer, latent
conditional U-Net, DDIM) on scikit-learn's digits with captions; saved in the StableDiffusionPipeline layout.

Run: python -m dkdm.builtin_train.digits_t2i --out dkdm/builtin/digits-t2i
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.digits import load_digits_images
from ..runtime import atomic_write_json

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# several phrasings per class; the empty prompt (caption dropout) is the unconditional branch for guidance
TEMPLATES = ["a handwritten digit {w}", "a handwritten digit {n}", "a handwritten {w}", "the number {w}",
             "the digit {n}", "a {w}", "{n}"]
MAX_TOKENS = 16


def captions_for(label: int) -> list[str]:
    return [t.format(w=WORDS[label], n=label) for t in TEMPLATES]


def eval_prompt(label: int) -> str:
    """The prompt evaluation and the docs use for class `label`."""
    return f"a handwritten digit {label}"


def build_tokenizer(out: Path):
    """A CLIPTokenizer whose BPE vocabulary holds every caption word whole (merges built letter by letter)."""
    import string

    from transformers import CLIPTokenizer

    words = sorted({w for c in range(10) for cap in captions_for(c) for w in cap.split()})
    vocab: dict[str, int] = {}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:  # alone and word-final: any ASCII word tokenizes
        vocab.setdefault(ch, len(vocab))
    for ch in list(vocab):
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[str] = []
    for w in words:  # "seven": s e -> se, se v -> sev, sev e -> seve, seve n</w> -> seven</w>
        left = w[0]
        for i, ch in enumerate(w[1:], start=1):
            right = ch + ("</w>" if i == len(w) - 1 else "")
            merged = left + right
            if f"{left} {right}" not in merges:
                merges.append(f"{left} {right}")
            vocab.setdefault(merged, len(vocab))
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"), model_max_length=MAX_TOKENS)
    tok.save_pretrained(out)
    return tok


def build_parts(tok):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=32,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(64, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=16)
    # Stable Diffusion's schedule (scaled_linear 0.00085..0.012) and its DDIM settings
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return vae, enc, unet, sched


def train_vae(vae, x: torch.Tensor, steps: int, batch: int, kl_weight: float, seed: int, log) -> dict:
    """Reconstruction (L1 + MSE) plus a small KL to N(0, I), as the LDM autoencoder minus its GAN/LPIPS terms."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    hist = []
    for step in range(steps):
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        post = vae.encode(xb).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        loss_rec = F.mse_loss(rec, xb) + F.l1_loss(rec, xb)
        loss = loss_rec + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        lr.step()
        hist.append(loss_rec.item())
        if step % 200 == 0 or step == steps - 1:
            log(f"vae step {step} rec {sum(hist[-200:]) / len(hist[-200:]):.4f}")
    vae.eval()
    return {"steps": steps, "batch": batch, "kl_weight": kl_weight, "final_rec_loss": sum(hist[-200:]) / len(hist[-200:])}


@torch.no_grad()
def measure_latents(vae, x: torch.Tensor):
    """Posterior mean/std of every image, and diffusers' scaling factor: 1 / std of sampled latents."""
    post = vae.encode(x).latent_dist
    gen = torch.Generator().manual_seed(0)
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    return post.mean, post.std, float(1.0 / z.flatten().std())


def train_denoiser(unet, enc, tok, mean, std, labels, scale, sched, steps, batch, drop, seed, log) -> dict:
    """Epsilon objective on scaled latents; text encoder trained jointly; captions dropped to "" with p=drop."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    noise_sched = DDPMScheduler.from_config(sched.config)
    both = torch.nn.ModuleDict({"unet": unet, "text_encoder": enc})
    opt = torch.optim.AdamW(both.parameters(), lr=5e-4, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.03)
    ema = EMAModel(both.parameters(), decay=0.999)
    both.train()
    caps = {c: captions_for(c) for c in range(10)}
    hist, t0 = [], time.time()
    for step in range(steps):
        idx = torch.randint(0, len(mean), (batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        texts = ["" if rng.random() < drop else rng.choice(caps[int(labels[i])]) for i in idx]
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=g)
        pred = unet(noise_sched.add_noise(z0, noise, t), t, encoder_hidden_states=enc(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(both.parameters(), 1.0)
        opt.step()
        lr.step()
        ema.step(both.parameters())
        hist.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            log(f"unet step {step} loss {sum(hist[-200:]) / len(hist[-200:]):.4f} ({(step + 1) / (time.time() - t0):.1f} steps/s)")
    ema.copy_to(both.parameters())
    both.eval()
    return {"steps": steps, "batch": batch, "caption_dropout": drop, "final_loss": sum(hist[-200:]) / len(hist[-200:])}


@torch.no_grad()
def adherence_check(pipe, n_per_class: int, guidance: float, steps: int) -> dict:
    """Sample each class's evaluation prompt and classify the images with the committed digits classifier."""
    from ..evaluate.digits_features import load_digits_extractor

    clf = load_digits_extractor()
    correct, total = 0, 0
    for c in range(10):
        gens = [torch.Generator().manual_seed(1000 * c + i) for i in range(n_per_class)]
        img = pipe([eval_prompt(c)] * n_per_class, num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="pt").images  # [0, 1]
        pred = clf(img[:, :1] * 2 - 1).argmax(1)
        correct += int((pred == c).sum())
        total += n_per_class
    return {"guidance_scale": guidance, "steps": steps, "samples": total, "accuracy": correct / total}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="dkdm/builtin/digits-t2i")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--unet-steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--check-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from diffusers import StableDiffusionPipeline

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    torch.manual_seed(a.seed)
    out = Path(a.out)
    t0 = time.time()
    x, y = load_digits_images(16)
    tok = build_tokenizer(out / "tokenizer")
    vae, enc, unet, sched = build_parts(tok)
    vae_info = train_vae(vae, x, a.vae_steps, a.batch, a.kl_weight, a.seed, log)
    mean, std, scale = measure_latents(vae, x)
    vae.register_to_config(scaling_factor=scale)
    with torch.no_grad():
        rec = vae.decode(mean).sample.clamp(-1, 1)
        from ..evaluate.digits_features import load_digits_extractor

        clf = load_digits_extractor()
        vae_info.update(scaling_factor=scale, recon_mse=float(F.mse_loss(rec, x)),
                        classifier_accuracy_on_reconstructions=float((clf(rec).argmax(1) == y).float().mean()),
                        classifier_accuracy_on_real=float((clf(x).argmax(1) == y).float().mean()))
    log(f"vae: {vae_info}")
    den_info = train_denoiser(unet, enc, tok, mean, std, y, scale, sched, a.unet_steps, a.batch, a.caption_dropout, a.seed, log)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, safe_serialization=True)
    checks = [adherence_check(pipe, a.check_per_class, gs, 50) for gs in (1.0, 2.0, 4.0)]
    log(f"adherence: {checks}")
    summary = {"data": "sklearn digits, 1797 images at 1x16x16 in [-1,1]", "captions": TEMPLATES,
               "eval_prompt": eval_prompt(7), "vae": vae_info, "denoiser": den_info, "adherence_check": checks,
               "params": {k: sum(p.numel() for p in m.parameters()) for k, m in
                          (("vae", vae), ("text_encoder", enc), ("unet", unet))},
               "seconds": time.time() - t0, "threads": torch.get_num_threads(), "args": vars(a),
               "command": "python -m dkdm.builtin_train.digits_t2i " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items())}
    atomic_write_json(out / "train_summary.json", summary)
    return summary



def save_prompt_grid(folder: str | Path, png: str | Path, guidance: float, steps: int = 25, ncol: int = 8) -> None:
    """One row per digit prompt ("a handwritten digit N"), seeds 0..ncol-1: the committed picture of the teacher."""
    from diffusers import StableDiffusionPipeline

    from ..imaging import grid, save_png
    from ..latent import generate_images

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = [eval_prompt(c) for c in range(10) for _ in range(ncol)]
    seeds = [j for _ in range(10) for j in range(ncol)]
    save_png(grid(generate_images(pipe, prompts, seeds, guidance, steps), ncol=ncol, scale=4), png)


if __name__ == "__main__":
    main()
