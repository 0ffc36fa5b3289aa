"""One adapter for calling every denoiser dkdm runs (teacher, students of any kind, samplers, serving, timing):
model(x, t[, prompt embeddings]) -> the output tensor in float32."""

from __future__ import annotations

import diffusers
import torch


def model_call(model, x: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
    """UNet2DModel, UNet2DConditionModel (with `cond`) or DiT (class label 0); a scalar t is broadcast over the batch,
    inputs are cast to the model's dtype (bf16/fp16 serving) and the output is float32."""
    dtype = next(model.parameters()).dtype
    if not torch.is_tensor(t) or t.dim() == 0:
        t = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    x = x.to(dtype)
    if isinstance(model, diffusers.DiTTransformer2DModel):
        out = model(x, timestep=t, class_labels=torch.zeros(x.shape[0], dtype=torch.long, device=x.device)).sample
    elif cond is not None:
        out = model(x, t, encoder_hidden_states=cond.to(x.device, dtype)).sample
    else:
        out = model(x, t).sample
    return out.float()
