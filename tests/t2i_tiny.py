"""A tiny Stable-Diffusion-layout pipeline built from configs (no hub): VAE 1x16x16 -> 4x4x4 latents,
CLIP text encoder with the digits caption vocabulary, latent UNet2DConditionModel, DDIM."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_t2i(path: Path, seed: int = 0, vae_seed: int | None = None) -> Path:
    """Random weights (seeded); `vae_seed` gives the same U-Net and text encoder with another VAE."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dkdm.builtin_train.digits_t2i import build_tokenizer

    path = Path(path)
    tok = build_tokenizer(path / "tokenizer")
    torch.manual_seed(seed)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 16), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    torch.manual_seed(seed if vae_seed is None else vae_seed)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.9)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A CLIPModel from configs (random weights) with the digits caption tokenizer: tests CLIP score plumbing."""
    from transformers import CLIPConfig, CLIPModel

    from dkdm.builtin_train.digits_t2i import build_tokenizer

    path = Path(path)
    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=8)
    CLIPModel(cfg).save_pretrained(path)
    return path
