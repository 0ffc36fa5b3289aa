"""Run by test_distill_ddp.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo):
distills a few steps and writes what each rank saw and its parameters after every step."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from dkdm.config import DistillConfig, SamplerConfig, UNetSpec
from dkdm.distill.loop import distill

teacher, cache, out = sys.argv[1:4]
log = {"rows": [], "params": []}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def on_step(step, micro, acc, student):
    log["rank"], log["world"] = acc.process_index, acc.num_processes
    log["rows"].append([digest(r) for b in micro for r in b.x])
    log["params"].append(digest(torch.cat([p.detach().flatten() for p in acc.unwrap_model(student).parameters()])))


cfg = DistillConfig(teacher=teacher, cache=cache, out=out, source="both", pool="dynamic", steps=3, batch_size=8,
                    student=UNetSpec(block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4),
                    sampler=SamplerConfig(steps=5), shuffle_buffer=8, num_workers=0, device="cpu", tracker="none",
                    checkpoint_every=0, log_every=1, grad_accum=2,
                    lr_schedule="constant")  # every step must move the weights (a warm-up starts at lr 0)
res = distill(cfg, progress=False, on_step=on_step)
# parameters after the last step, too
Path(out, f"rank{log['rank']}.json").write_text(json.dumps({**log, "summary": res}))
