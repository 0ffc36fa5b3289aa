"""Issue 19, points 2 and 6: one seeding module, evaluation noise apart from training noise, and a student
that knows which trajectories it was trained on."""

from __future__ import annotations

import json

import pytest
import torch

from dkdm import seeds
from dkdm.config import DistillConfig, EvaluateConfig, SamplerConfig, UNetSpec
from dkdm.distill.loop import distill
from dkdm.errors import DkdmError
from dkdm.evaluate.overlap import check_seed_overlap, noise_seeds
from dkdm.evaluate.run import evaluate
from dkdm.sampling import initial_noise

STUDENT = UNetSpec(block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4)


def test_demo_evaluation_noise_is_apart_from_its_trajectories():
    """The demo: 10,240 trajectories from base seed 0, 2,048 evaluation samples from index 10000."""
    trained = set(seeds.trajectory(0, j) for j in range(10240))
    assert len(trained & set(noise_seeds("evaluation", 10000, 2048))) == 0
    # the rule before this change (raw seeds) put 240 evaluation images on training noise
    assert len(trained & set(noise_seeds("trajectory", 10000, 2048))) == 240
    # the interval arithmetic evaluate uses agrees with the sets
    assert seeds.overlap(seeds.trajectory_spans(0, 0, 10240), [(10000, 12048)]) == 240


@pytest.mark.parametrize("base", [0, 1, 7, 2**31 - 1, 2**40 + 3])
def test_every_purpose_lives_in_its_own_range(base):
    traj = [seeds.trajectory(base, j) for j in (0, 1, 2**31 - 1, 2**31, 10**12)]
    assert all(seeds.TRAJECTORY_SPACE[0] <= s < seeds.TRAJECTORY_SPACE[1] for s in traj)
    ev = [seeds.evaluation(i) for i in (0, base, 2**30 - 1, 2**30, 2**33)]
    assert all(seeds.EVALUATION_SPACE[0] <= s < seeds.EVALUATION_SPACE[1] for s in ev)
    streams = [seeds.rank(base, 0), seeds.rank(base, 1), seeds.pool(base, 0), seeds.pool_draws(base, 0),
               seeds.real(base, 0), seeds.worker(base, 0, 0), seeds.worker(base, 0, 1), seeds.shard_order(base, 0),
               seeds.pool_init(base)]
    assert all(seeds.STREAM_SPACE[0] <= s < seeds.STREAM_SPACE[1] for s in streams)
    assert len(set(streams)) == len(streams)  # purposes and parts give different streams
    assert seeds.trajectory(0, 5) == 5  # base 0 keeps seed == trajectory id (existing caches read the same)


def test_base_seeds_give_other_trajectories_and_mt19937_keeps_32_bits():
    assert seeds.trajectory(1, 0) != seeds.trajectory(0, 0)
    a, _ = initial_noise([5], (1, 4, 4))
    b, _ = initial_noise([5 + 2**32], (1, 4, 4))
    assert torch.equal(a, b)  # why the space is 32 bits: the old pool rule seed*2**32+i collided


def test_student_card_names_its_cache_and_evaluate_refuses_overlap(tiny_cache, tiny_teacher, tmp_path):
    dcfg = DistillConfig(out=str(tmp_path / "run"), teacher=str(tiny_teacher), cache=str(tiny_cache), student=STUDENT,
                         steps=2, batch_size=8, shuffle_buffer=64, device="cpu", log_every=1, sampler=SamplerConfig(steps=5),
                         checkpoint_every=0)
    distill(dcfg, progress=False)
    card = json.loads((tmp_path / "run" / "student" / "dkdm_student.json").read_text())
    manifest = json.loads((tiny_cache / "manifest.json").read_text())
    assert card["trained_on"] == {"cache_id": manifest["cache_id"], "base_seed": 0, "seed_rule": seeds.TRAJECTORY_RULE,
                                  "trajectories": [0, 12]}
    student = str(tmp_path / "run" / "student")
    ecfg = EvaluateConfig(teacher=str(tiny_teacher), students=[student], out=str(tmp_path / "ev"), sampler=SamplerConfig(steps=2),
                          num_samples=8, batch_size=8, speed_repeats=1, device="cpu", cache_root=str(tmp_path / "rc"),
                          embeddings=False, seed=10, seed_space="trajectory")
    with pytest.raises(DkdmError, match=r"2 of 8 evaluation seeds .* trajectories 0\.\.11") as err:
        evaluate(ecfg, progress=False)
    assert "dkdm_student.json" in str(err.value) and len(str(err.value)) < 300
    # default: the evaluation space, no overlap by construction; on purpose: allowed and counted in the report
    assert check_seed_overlap([student], "evaluation", 0, 10**6, allow=False) == {student: 0}
    import dataclasses

    rep = evaluate(dataclasses.replace(ecfg, allow_seed_overlap=True), progress=False)
    assert rep["seed_overlap"] == {student: 2} and rep["seed_space"] == "trajectory"


def test_evaluation_samples_use_the_evaluation_space(tiny_teacher, tmp_path):
    """Same index, same image; the image is the one seeds.evaluation(index) gives, not raw seed `index`."""
    from dkdm.sampling import sample
    from dkdm.schedulers import make_scheduler
    from dkdm.teacher import load_teacher

    t = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(steps=2), t.scheduler_config)
    mine = sample(t, sched, noise_seeds("evaluation", 3, 2), t.sample_shape)
    assert torch.equal(mine, sample(t, sched, [seeds.evaluation(3), seeds.evaluation(4)], t.sample_shape))
    assert not torch.equal(mine, sample(t, sched, [3, 4], t.sample_shape))
