"""Few-step distillation inside `dkdm distill`: checks, the objective, the student's own scheduler and the card's
`sampling` entry. Kept apart from loop.py so the loop only asks "which objective, which batches, which scheduler"."""

from __future__ import annotations

import diffusers
import torch

from ..config import DistillConfig
from ..errors import DkdmError
from ..students.call import find_model_dir, load_model
from .objectives import PAIR_OBJECTIVES, check
from .objectives.common import PREDICTION, PairBatch


def is_pairs(cfg: DistillConfig) -> bool:
    return cfg.objective in PAIR_OBJECTIVES


def validate(cfg: DistillConfig) -> None:
    check(cfg.objective)
    if cfg.student_init not in ("random", "teacher") and find_model_dir(cfg.student_init) is None:
        raise DkdmError(f"--student-init must be random, teacher or a student folder (with unet/ or transformer/); "
                        f"{cfg.student_init!r} is none of them")
    if cfg.student_init == "teacher" and not cfg.teacher:
        raise DkdmError("--student-init teacher copies the teacher's weights: give --teacher")
    if not is_pairs(cfg):
        return
    if cfg.source != "cache" or cfg.real_ratio > 0 or not cfg.cache:
        raise DkdmError(f"--objective {cfg.objective} learns from cached trajectories: use --source cache --cache URL "
                        "and no --real-ratio")
    if cfg.feature_kd > 0:
        raise DkdmError(f"--feature-kd composes with --objective eps only: {cfg.objective} targets are cached states, "
                        "with no teacher forward on the student's inputs")
    if cfg.pair_starts not in ("all", "grid"):
        raise DkdmError(f"--pair-starts must be all or grid, got {cfg.pair_starts!r}")
    if cfg.pair_starts == "grid" and cfg.objective != "trajectory":
        raise DkdmError("--pair-starts grid trains a trajectory student's own jumps only: use it with --objective trajectory")
    if cfg.jump < 0 or cfg.fewstep_steps < 1 or not 0 <= cfg.target_ema < 1 or cfg.endpoint_weight < 0:
        raise DkdmError(f"nonsense few-step setting: jump {cfg.jump} >= 0, fewstep_steps {cfg.fewstep_steps} >= 1, "
                        f"target_ema {cfg.target_ema} in [0, 1), endpoint_weight {cfg.endpoint_weight} >= 0")


def nested_steps(walk_timesteps: list[int], num_train_timesteps: int, base_config: dict) -> list[int]:
    """Step counts n whose trailing DDIM grid lies on the cache's walk (DDIM-40 trailing holds 1/2/4/5/8/10/20/40)."""
    on_walk, out = set(int(t) for t in walk_timesteps), []
    sched = diffusers.DDIMScheduler.from_config({**_base(base_config), "timestep_spacing": "trailing"})
    for n in range(1, len(walk_timesteps) + 1):
        sched.set_timesteps(n)
        if set(int(t) for t in sched.timesteps) <= on_walk:
            out.append(n)
    return out


def resolve_jump(cfg: DistillConfig, walk_timesteps: list[int], T: int, base_config: dict) -> int:
    steps = len(walk_timesteps)
    if cfg.jump:
        return cfg.jump
    if cfg.objective == "consistency":
        return 1
    if cfg.fewstep_steps not in nested_steps(walk_timesteps, T, base_config):
        raise DkdmError(f"a {cfg.fewstep_steps}-step trailing grid is not on the cache's {steps}-step walk; use "
                        f"--fewstep-steps one of {nested_steps(walk_timesteps, T, base_config)} or walk a finer grid")
    return steps // cfg.fewstep_steps


def student_scheduler(cfg: DistillConfig, base_config: dict, walk_steps: int, jump: int):
    """The scheduler the student samples with (exported in student/scheduler/): DDIM trailing for a trajectory
    student, LCM trailing with original_inference_steps = the walk's for a consistency student; both v-prediction."""
    base = {**_base(base_config), "prediction_type": PREDICTION, "timestep_spacing": "trailing"}
    if cfg.objective == "trajectory":
        # no clipping: a multi-state jump's exact x0* may sit a little outside [-1, 1]
        sched = diffusers.DDIMScheduler.from_config({**base, "clip_sample": False})
        sched.set_timesteps(walk_steps // jump)
        return sched
    base.pop("variance_type", None)  # not an LCMScheduler setting
    sched = diffusers.LCMScheduler.from_config({**base, "original_inference_steps": walk_steps})
    sched.set_timesteps(min(cfg.fewstep_steps, walk_steps))
    return sched


def sampling_card(cfg: DistillConfig, sched, walk_timesteps: list[int], T: int, base_config: dict, jump: int,
                  guided: bool = False) -> dict:
    """card["sampling"]: what evaluate/serve sample this student with by default (issue 23, part B reads it).
    guided: a text-conditioned student learned the guided walk, so it samples with guidance_scale 1 (LCM-style)."""
    if cfg.objective == "trajectory":
        supported = [len(walk_timesteps) // jump]
        kind = "ddim"
    else:
        supported = [n for n in nested_steps(walk_timesteps, T, base_config) if n in (1, 2, 4, 8)]
        kind = "lcm"
    out = {"scheduler": kind, "steps": int(sched.num_inference_steps), "steps_supported": supported,
           "objective": cfg.objective, "prediction_type": PREDICTION, "jump_states": jump,
           "walk_steps": len(walk_timesteps)}
    if guided:
        out["guidance_scale"] = 1.0
    return out


def pair_stride(cfg: DistillConfig, jump: int) -> int:
    """Cached states between two pair starts: 1 (every state), or the jump itself, so that a trajectory student
    trains only on the states its own sampler starts from (999 and 499 for a 2-step student on a 40-step walk)."""
    return jump if cfg.pair_starts == "grid" else 1


def build_objective(cfg: DistillConfig, student, noise_sched, channels: int, base_config: dict, walk_steps: int):
    from .objectives.consistency import ConsistencyObjective
    from .objectives.trajectory import TrajectoryObjective

    if cfg.objective == "trajectory":  # the endpoint sits where the walk's last DDIM step put it
        final = float(diffusers.DDIMScheduler.from_config(_base(base_config)).final_alpha_cumprod)
        return TrajectoryObjective(noise_sched.alphas_cumprod, channels, final)
    lcm = student_scheduler(cfg, base_config, walk_steps, 1)
    return ConsistencyObjective(noise_sched.alphas_cumprod, channels, lcm, student, cfg.target_ema, cfg.endpoint_weight)


def pair_batch(parts: tuple, emb: torch.Tensor | None) -> PairBatch:
    x_i, t_i, x_j, t_j, end_j, x0, cond = parts
    return PairBatch(x_i, t_i, x_j, t_j, end_j.bool(), x0, emb[cond] if emb is not None else None)


def init_from_teacher(student, teacher_unet) -> None:
    """A narrow student of the teacher's width starts as the teacher (weights copied); any other shape is refused."""
    _copy(student, teacher_unet, "--student-init teacher needs a student of the teacher's architecture ({n} tensors "
          "differ); give the teacher's block_out_channels, or use --student bk-* (copies kept blocks)")


def init_from_student(student, folder: str) -> dict:
    """Start from an earlier student of the same architecture (safetensors weights, e.g. an eps student made by
    `dkdm distill`: the network is cut first, then the steps); its card's trained_on comes along for the record."""
    from ..evaluate.overlap import card_of  # a leaf: reads the card only

    where = find_model_dir(folder)
    _copy(student, load_model(where), f"--student-init {folder}: that student's architecture is not this run's "
          "({n} tensors differ); give the same [student] spec (or --student kind) it was made with")
    _, card = card_of(folder)
    return {"student": str(folder), "trained_on": card.get("trained_on"), "objective": card.get("objective", {}).get("name")
            if isinstance(card.get("objective"), dict) else None}


def _copy(student, source, message: str) -> None:
    src, dst = source.state_dict(), student.state_dict()
    bad = [k for k in dst if k not in src or src[k].shape != dst[k].shape]
    if bad or set(src) != set(dst):
        raise DkdmError(message.format(n=max(len(bad), len(set(src) ^ set(dst)))))
    student.load_state_dict({k: v.to(dst[k].dtype) for k, v in src.items()})


def _base(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}
