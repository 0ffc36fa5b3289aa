"""Typed run configurations, loaded from TOML recipes in `pipelines/` and overridden by CLI flags."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DkdmError
from .recipes import CHECKOUT_DIR as PIPELINES_DIR, resolve_data_file, resolve_recipe


@dataclass
class UNetSpec:
    """Architecture of a UNet built from scratch (teacher trained here, or a student)."""

    sample_size: int = 16
    in_channels: int = 1
    out_channels: int = 1  # 2*in_channels for learned variance
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (1,)  # which resolution levels carry self-attention
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    learned_variance: bool = False
    cross_attention_dim: int | None = None  # set from a text-conditioned teacher: the student is a UNet2DConditionModel


@dataclass
class TransformerSpec:
    """A patch-transformer student (diffusers DiTTransformer2DModel); width = heads x head_dim."""

    patch_size: int = 2
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 16


@dataclass
class SamplerConfig:
    """How a teacher walks its reverse process; it fixes which timesteps a student learns."""

    scheduler: str = "ddim"  # ddim | ddpm | dpm++ | euler | lcm
    steps: int = 50
    eta: float = 0.0
    timestep_spacing: str = "trailing"
    # which training timesteps a cache or live pool visits (dkdm/coverage.py): offsets | grid | full;
    # ignored by evaluate, which samples the grid
    coverage: str = "offsets"


@dataclass
class TrainConfig:
    """Plain data-based diffusion training (the embedded teacher, and the data baseline)."""

    out: str = "runs/teacher"
    model: UNetSpec = field(default_factory=UNetSpec)
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    vlb_weight: float = 1.0  # learned-variance models: weight of the variational-bound term in bits/dim (IDDPM hybrid)


@dataclass
class GenerateConfig:
    teacher: str = "builtin:digits"
    out: str = "cache/digits"
    trajectories: int = 1024
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    keep: str = "all"  # all | every:K | first:N | last:N | comma list of step indices
    shard_size: int = 128  # trajectories per shard
    seed: int = 0
    batch_size: int = 128
    device: str = "auto"
    dtype: str = "float16"
    format: str = "wds"  # wds | zarr
    prompts: str = ""  # text-conditioned teachers: file with one prompt per line (trajectory i -> prompt i mod n)
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = none


@dataclass
class DistillConfig:
    teacher: str = ""  # optional with a cache (checks its fingerprint); needed for live sources
    out: str = "runs/student"
    source: str = "cache"  # cache | live | both
    cache: str = ""
    student: UNetSpec = field(default_factory=lambda: UNetSpec(block_out_channels=(16, 32, 32)))
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # live teacher only
    pool: str = "dynamic"  # iterative | shuffled | dynamic
    rho: float = 0.4
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # any diffusers.optimization scheduler name: cosine | constant_with_warmup | linear
    warmup_steps: int = 100
    ema_decay: float = 0.995
    shuffle_buffer: int = 8192
    num_workers: int = 0  # loader processes; blocks decode in microseconds, so 0 keeps up (bench distill)
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    # --- trainer scale (issue 4) ---
    pool_init: str = "teacher"  # teacher | cache: seed the live pool from cache records
    real: str = ""  # digits | folder of PNG/JPG | webdataset .tar of images
    real_ratio: float = 0.0  # share of each batch from real images (1 = plain data training)
    kl_weight: float = 1.0  # weight of KL(p_T||p_S) in bits/dim per term, learned-variance teachers (DKDM, docs/distill.md)
    feature_kd: float = 0.0  # weight of BK-SDM block-output MSE (live teacher, matching blocks)
    mixed_precision: str = "no"  # no | fp16 | bf16
    grad_accum: int = 1
    grad_clip: float = 1.0  # max gradient L2 norm per optimizer step (0 = no clipping)
    checkpoint_every: int = 500  # 0 = only on Ctrl-C and at the end
    checkpoints_keep: int = 3
    resume: str = ""  # "" | latest | path to OUT/checkpoints/step-N
    sample_every: int = 0  # sample grid PNG from fixed seeds every N steps (0 = only at the end)
    export_ema: bool = True
    tracker: str = "auto"  # auto (TensorBoard when installed) | tensorboard | none
    on_bad_shard: str = "stop"  # stop | skip: a damaged or forged cache shard stops the run, or is skipped with a warning
    # --- students made from the teacher (issue 11, docs/students.md) ---
    student_kind: str = "narrow"  # narrow (the [student] spec, random init) | blocks (teacher minus parts) | transformer
    student_remove: list[str] = field(default_factory=list)  # blocks: parts (mid, stage.1.attn, ...) and/or presets (bk-tiny)
    transformer: TransformerSpec = field(default_factory=TransformerSpec)
    student_init: str = "random"  # random | teacher (a copy of it, teacher-width students) | a student folder (warm start)
    # --- few-step objectives (issue 23, docs/fewstep.md) ---
    objective: str = "eps"  # eps (DKDM matching) | trajectory (jumps between cached states) | consistency (LCM)
    jump: int = 0  # cached states per student step; 0 = trajectory: walk steps / fewstep_steps, consistency: 1
    fewstep_steps: int = 4  # the step count a trajectory student serves / a consistency student's default
    target_ema: float = 0.95  # consistency: EMA decay of the target network (LCM's 0.95)
    endpoint_weight: float = 0.0  # consistency: weight of the direct term ||f(x_i,t_i) - x0||² (0 = pure CD)
    pair_starts: str = "all"  # trajectory: all (a jump from every cached state) | grid (only from the states its sampler visits)


@dataclass
class EvaluateConfig:
    teacher: str = "builtin:digits"
    students: list[str] = field(default_factory=list)
    out: str = "runs/eval"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    num_samples: int = 512
    batch_size: int = 64
    seed: int = 10_000  # first evaluation sample index; sample i uses noise seed dkdm.seeds.evaluation(seed + i)
    seed_space: str = "evaluation"  # evaluation (disjoint from every trajectory) | trajectory (raw seeds, as before 0.4)
    allow_seed_overlap: bool = False  # score a student on noise of trajectories its card says it was trained on
    speed_repeats: int = 5
    device: str = "auto"
    reference: str = "auto"  # auto (digits for 1x16x16 teachers, else teacher) | digits | teacher | folder | .tar/URL | .npz
    reference_limit: int = 0  # at most this many real images (0 = all)
    features: str = "auto"  # auto | digits | inception | package.module:factory
    inception: str = ""  # path to clean-fid's inception-2015-12-05.pt (else $DKDM_INCEPTION)
    cache_root: str = "cache"  # reference statistics are cached in CACHE_ROOT/reference-stats/
    speed_batch_sizes: list[int] = field(default_factory=list)  # images/s at each; empty = [batch_size]
    sweep_schedulers: list[str] = field(default_factory=list)  # e.g. ["ddpm", "ddim", "dpm++", "euler"]; empty = no sweep
    sweep_steps: list[int] = field(default_factory=list)
    sweep_samples: int = 256
    target_fid: float = 0.0  # cheapest setting reaching it; 0 = 1.25 x the teacher's FID at the main setting
    embeddings: bool = True  # PCA and t-SNE of real/teacher/student features
    embedding_points: int = 400  # per group
    sweep_students: bool = True  # false: sweep only the teacher (the front few-step students are set against)
    own_samplers: bool = True  # also sample each student with the scheduler and steps its card names (few-step students)
    confirm_front: bool = True  # score the teacher's front settings around each student's equal-FID crossing again on
    # the main seeds: few-sample FIDs favour less diverse models and can flip a student's order (front_confirm.py)


@dataclass
class TuneConfig:
    """`dkdm tune`: a seeded multi-objective search over sampler settings and prompt templates (SustainDiffusion)."""

    teacher: str = "builtin:digits"
    students: list[str] = field(default_factory=list)
    out: str = "runs/tune"  # tune.json, tune.md, PNGs, tune-recipe.toml and the optuna study tune.db
    trials: int = 40  # total finished trials, the default setting included; a rerun continues up to this many
    population: int = 10  # NSGA-II population per generation
    seed: int = 0  # seeds the optuna sampler; sample seeds are fixed below, the same for every trial
    sample_seed: int = 10_000  # quality samples use seeds sample_seed.., bias samples the next bias_samples seeds
    num_samples: int = 200  # quality samples per trial (FID, adherence)
    bias_samples: int = 200  # text models: samples on the neutral prompts per trial
    batch_size: int = 100
    device: str = "auto"
    schedulers: list[str] = field(default_factory=list)  # empty = every kind in dkdm.schedulers.KINDS
    steps: list[int] = field(default_factory=lambda: [4, 6, 8, 10, 15, 20, 25, 35, 50])
    eta_max: float = 1.0  # eta in [0, eta_max] (steps of 0.25) for schedulers that take it
    guidance_min: float = 1.0  # text models: classifier-free guidance in [min, max] (steps of 0.5)
    guidance_max: float = 6.0
    prompts: str = ""  # text models: subjects, one per line (a named class each, for adherence)
    prompt_templates: list[str] = field(default_factory=lambda: ["{subject}"])  # "{subject}" = the prompt line
    neutral_prompts: list[str] = field(default_factory=lambda: ["a handwritten digit"])  # name no class: bias
    default: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=25))  # the setting to beat
    default_guidance: float = 3.0  # text models; the default template is prompt_templates[0]
    quality_factor: float = 1.1  # feasible: FID <= quality_factor x the default's FID
    adherence_drop: float = 0.02  # text models, feasible: adherence >= the default's minus this
    confirm_rounds: int = 3  # re-time the default and the chosen settings, taking turns, this many rounds (0 = off)
    energy: str = "auto"  # auto (zeus-ml, else the hardware counter, else seconds) | zeus | counter | none
    reference: str = "auto"  # as [evaluate]: auto = digits for 1x16x16 images
    cache_root: str = "cache"  # reference statistics are cached here


@dataclass
class Recipe:
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DkdmError(f"{where} must be a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        return tuple(_coerce(typing.get_args(tp)[0], v, where) for v in value)
    if origin is list:
        return [_coerce(typing.get_args(tp)[0], v, where) for v in value]
    if tp is float and isinstance(value, int):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise DkdmError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build a dataclass from a dict, refusing unknown keys so typos in recipes are caught."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise DkdmError(f"unknown key(s) {sorted(unknown)} in [{where or cls.__name__}]; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe is a TOML path, or a bare name of a shipped recipe (dkdm/recipes.py)."""
    return resolve_recipe(recipe)


def load_recipe(recipe: str | Path | None) -> Recipe:
    if recipe is None:
        return Recipe()
    path = resolve_recipe_path(recipe)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DkdmError(f"recipe {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DkdmError(f"recipe {path} is not valid TOML: {exc}") from exc
    r = from_dict(Recipe, data)
    return dataclasses.replace(r, generate=dataclasses.replace(r.generate, prompts=resolve_data_file(r.generate.prompts)))


def override(cfg: Any, **changes: Any) -> Any:
    """Apply CLI flags that were given (None means 'not given'); dotted keys reach nested sections."""
    for key, value in changes.items():
        if value is None:
            continue
        target, *rest = key.split("__")
        if rest:
            sub = override(getattr(cfg, target), **{"__".join(rest): value})
            cfg = dataclasses.replace(cfg, **{target: sub})
        else:
            cfg = dataclasses.replace(cfg, **{target: value})
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
