"""The `paper` recipe (full-chain live pool, rho 0.4, lr 1e-4 constant, EMA 0.9999, batch 128) loads as the
official CIFAR-10 settings and runs end to end on digits with small overrides."""

from __future__ import annotations

import dataclasses
import json

from dkdm import config as cfgmod
from dkdm.config import UNetSpec
from dkdm.distill.loop import distill


def test_paper_recipe_settings():
    d = cfgmod.load_recipe("paper").distill
    assert (d.source, d.pool, d.rho, d.batch_size, d.lr, d.lr_schedule, d.ema_decay, d.kl_weight) == \
        ("live", "dynamic", 0.4, 128, 1e-4, "constant", 0.9999, 1.0)
    assert (d.sampler.scheduler, d.sampler.coverage) == ("ddpm", "full")


def test_paper_recipe_runs_on_digits(tmp_path):
    d = cfgmod.load_recipe("paper").distill
    d = dataclasses.replace(d, teacher="builtin:digits", out=str(tmp_path / "run"), steps=2, batch_size=1, rho=0.001,
                            device="cpu", checkpoint_every=0, sample_every=0, tracker="none", log_every=1,
                            student=UNetSpec(block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4))
    res = distill(d, progress=False)
    assert res["pool"] == "dynamic" and res["last_step"] == 2
    card = json.loads((tmp_path / "run" / "student" / "dkdm_student.json").read_text())
    assert card["sampler"]["coverage"] == "full" and card["sampler"]["steps"] == 1000
    assert res["teacher_forwards"] == 2  # one pool member, drawn twice: pool init at t=999 costs nothing
