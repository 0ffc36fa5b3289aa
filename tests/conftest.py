"""Tiny real models built from configs (no hub), shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DKDM_TEST_THREADS=1 when the cores are shared: two spinning OpenMP threads on a busy machine run ~20x slower.
torch.set_num_threads(int(os.environ.get("DKDM_TEST_THREADS", 0)) or min(2, os.cpu_count() or 1))

from diffusers import DDPMPipeline, DDPMScheduler  # noqa: E402

from dkdm.config import GenerateConfig, SamplerConfig, UNetSpec  # noqa: E402
from dkdm.students import build_unet  # noqa: E402

TINY = UNetSpec(sample_size=16, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4)


def save_tiny_teacher(path: Path, seed: int = 0, learned_variance: bool = False) -> Path:
    torch.manual_seed(seed)
    unet = build_unet(UNetSpec(**{**TINY.__dict__, "learned_variance": learned_variance}))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          variance_type="learned_range" if learned_variance else "fixed_small")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny")


@pytest.fixture(scope="session")
def other_teacher(tmp_path_factory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher2") / "other", seed=1)


def gen_cfg(teacher, out, **kw) -> GenerateConfig:
    base = dict(teacher=str(teacher), out=str(out), trajectories=12, shard_size=4, batch_size=4,
                sampler=SamplerConfig(steps=5, coverage="grid"), device="cpu")
    base.update(kw)
    return GenerateConfig(**base)


@pytest.fixture(scope="session")
def tiny_cache(tiny_teacher, tmp_path_factory) -> Path:
    from dkdm.generate import generate

    out = tmp_path_factory.mktemp("cache") / "c"
    generate(gen_cfg(tiny_teacher, out), progress=False)
    return out


def run_cli(*args, env=None, timeout=600):
    """Run the installed CLI in a subprocess, as a user would."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dkdm.cli", *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout)
