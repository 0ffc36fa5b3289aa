"""Each CLI flag that sets a config field is declared once, in a table: the typer options (name, type, help) and
the recipe overrides are both generated from it. A new flag is one `Flag(...)` line in the command's table."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import typer

from .. import config as cfgmod
from ..errors import DkdmError

RECIPE_HELP = "TOML recipe (path, or name in pipelines/); flags override it."
COVERAGE_HELP = "Timesteps visited: offsets (grid shifted per trajectory: all T) | grid | full (DDPM, T steps)."


def ints(text: str, flag: str) -> list:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DkdmError(f"{flag} must be comma-separated integers, got {text!r}") from None


def names(text: str, flag: str) -> list:
    return [v.strip() for v in text.split(",") if v.strip()]


@dataclass(frozen=True)
class Flag:
    """One option. `field` is the config field it sets (`sampler__steps` reaches a nested section); the option
    is `--field-name` unless `name` says otherwise; its type is the field's unless `convert` parses text."""

    field: str
    help: Optional[str] = None
    name: str = ""  # python parameter name, hence the flag: "student" -> --student
    decls: tuple[str, ...] = ()  # explicit declarations, e.g. ("--export-ema/--export-raw",)
    convert: Optional[Callable[[Any, str], Any]] = None  # text -> field value (lists given as "a,b,c")
    many: bool = False  # repeatable, a list of strings (--student A --student B)
    required: bool = False
    extra: tuple[tuple[str, Any], ...] = ()  # more typer.Option keywords, e.g. (("envvar", "DKDM_INCEPTION"),)

    @property
    def param(self) -> str:
        return self.name or self.field.split("__")[-1]

    def flag(self) -> str:
        return self.decls[0].split("/")[0] if self.decls else "--" + self.param.replace("_", "-")


def field_type(section: type, path: str, scalar: bool = True) -> Any:
    """The field's type, looked up through nested config dataclasses: a typo in a table fails at import."""
    *parents, leaf = path.split("__")
    for name in parents:
        section = typing.get_type_hints(section)[name]
    hints = typing.get_type_hints(section)
    if leaf not in hints:
        raise TypeError(f"{section.__name__} has no field {leaf!r}")
    if scalar and hints[leaf] not in (int, float, str, bool):
        raise TypeError(f"{section.__name__}.{leaf} is {hints[leaf]}: give its Flag a convert= that parses text")
    return hints[leaf]


def parameter(f: Flag, section: type) -> inspect.Parameter:
    field_type(section, f.field, scalar=not (f.many or f.convert))
    if f.many:
        tp, default = List[str], typer.Option(... if f.required else [], *f.decls, help=f.help, **dict(f.extra))
    else:
        tp = str if f.convert else field_type(section, f.field)
        tp, default = (tp, ...) if f.required else (Optional[tp], None)
        default = typer.Option(default, *f.decls, help=f.help, **dict(f.extra))
    return inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=tp)


def overrides(flags: tuple[Flag, ...], given: dict) -> dict:
    """{config field: value} for the flags given on the command line (None: not given)."""
    out = {}
    for f in flags:
        value = given.pop(f.param)
        if value is not None and f.convert:
            value = f.convert(value, f.flag())
        out[f.field] = (list(value) or None) if f.many else value  # an unrepeated list flag keeps the recipe's
    return out


def configured(section: str, flags: tuple[Flag, ...], recipe_default: Optional[str] = None):
    """A command `fn(cfg, **own)` gets `--recipe` and the table's flags; `cfg` is the recipe's [section] with the
    flags given applied. A parameter named `recipe_config` receives the whole loaded Recipe."""
    cls = type(getattr(cfgmod.Recipe(), section))

    def decorate(fn):
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in list(inspect.signature(fn).parameters.values())[1:]
               if p.name != "recipe_config"]
        wants_recipe = "recipe_config" in inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn)
        recipe = inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                   default=typer.Option(recipe_default, help=RECIPE_HELP))
        params = [recipe, *(parameter(f, cls) for f in flags),
                  *(p.replace(annotation=hints.get(p.name, p.annotation)) for p in own)]

        @functools.wraps(fn)
        def run(**given):
            r = cfgmod.load_recipe(given.pop("recipe"))
            cfg = cfgmod.override(getattr(r, section), **overrides(flags, given))
            return fn(cfg, **given, **({"recipe_config": r} if wants_recipe else {}))

        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        del run.__wrapped__  # typer must read the generated signature, not fn's
        return run

    return decorate


def command(app: typer.Typer, friendly, section: str, flags: tuple[Flag, ...], name: Optional[str] = None,
            recipe_default: Optional[str] = None):
    """Register `fn(cfg, **own)` as the command `name` (default: fn's name) under the error policy, with its flags."""
    def decorate(fn):
        app.command(name)(friendly(configured(section, flags, recipe_default)(fn)))
        return fn

    return decorate


def pick(flags: tuple[Flag, ...], *names: str, required: tuple[str, ...] = (), **helps: Optional[str]) -> tuple[Flag, ...]:
    """Some of a table's flags, by parameter name, for another command that sets the same fields; helps replaced."""
    by = {f.param: f for f in flags}
    return tuple(dataclasses.replace(by[n], help=helps.get(n, by[n].help), required=n in required) for n in names)


F = Flag
TRAIN = (
    F("out", "Output folder (DDPMPipeline layout)."), F("steps", "Optimizer steps."), F("batch_size"), F("lr"),
    F("seed"), F("device", "auto | cpu | cuda[:N]"),
)
GENERATE = (
    F("teacher", "builtin:digits | local folder | hub id (org/name)."),
    F("out", "Cache location: folder or fsspec URL (s3://...)."),
    F("trajectories", "Number of teacher trajectories (seeds)."),
    F("sampler__steps", "Sampler steps per trajectory."),
    F("sampler__scheduler", "ddim | ddpm | dpm++ | euler | lcm"),
    F("sampler__eta", "DDIM eta (0 = deterministic)."),
    F("keep", "Steps kept as records: all | every:K | first:N | last:N | i,j,k"),
    F("shard_size", "Trajectories per shard."),
    F("seed", "Base seed: trajectory i uses noise seed (i + seed*0x9E3779B1) mod 2^31 (docs/cache-format.md)."),
    F("batch_size", "Trajectories walked together."),
    F("dtype", "Record dtype: float16 | bfloat16 | float32."),
    F("format", "Shard backend: wds (tar shards) | wds-gz (gzipped tar shards) | zarr (trajectories.zarr).", decls=("--format",)),
    F("prompts", "Text-conditioned teachers: file with one prompt per line."),
    F("guidance_scale", "Classifier-free guidance scale (1 = none)."),
    F("sampler__coverage", COVERAGE_HELP),
    F("device", "auto | cpu | cuda[:N]"),
)
DISTILL = (
    F("teacher", "Teacher (required for live; checks the cache's fingerprint)."),
    F("cache", "Cache folder or URL to read records from."),
    F("source", "cache | live | both"),
    F("out", "Run folder; the student goes to OUT/student."),
    F("steps"), F("batch_size"), F("lr"),
    F("pool", "Live pool: iterative | shuffled | dynamic"),
    F("rho", "Pool size factor: rho*T*b samples."),
    F("sampler__steps", "Live teacher: steps T of its schedule.", name="sampler_steps", decls=("--sampler-steps",)),
    F("sampler__coverage", "Live teacher: " + COVERAGE_HELP),
    F("shuffle_buffer"), F("num_workers"), F("seed"), F("device"),
    F("real", "Real images to mix in: digits | folder of PNG/JPG | webdataset .tar."),
    F("real_ratio", "Share of each batch from --real (1 = plain data training)."),
    F("pool_init", "Live pool start: teacher (walk it) | cache (seed from records)."),
    F("kl_weight", "Weight of KL(p_T||p_S) in bits/dim per term (learned-variance teachers; default 1, as DKDM)."),
    F("feature_kd", "Weight of block-output MSE (live teacher, matching blocks)."),
    F("mixed_precision", "no | fp16 | bf16"),
    F("grad_accum", "Micro-batches per optimizer step."),
    F("grad_clip", "Max gradient L2 norm per step (0 = no clipping; default 1)."),
    F("checkpoint_every", "Steps between checkpoints (0: end and Ctrl-C only)."),
    F("checkpoints_keep", "Newest checkpoints kept (<= 0 keeps all)."),
    F("resume", "latest | OUT/checkpoints/step-N"),
    F("sample_every", "Sample grid PNG every N steps."),
    F("export_ema", "Export EMA (default) or raw weights.", decls=("--export-ema/--export-raw",)),
    F("tracker", "tensorboard | none"),
    F("on_bad_shard", "stop (default) | skip: a damaged cache shard stops the run, or is skipped with a warning."),
    F("student_kind", "narrow | blocks | transformer | a preset: bk-base, bk-small, bk-tiny, ssd, vega (docs/students.md).",
      name="student"),
    F("student_remove", "blocks: parts to remove, e.g. mid,stage.1.attn (`dkdm students parts`).", name="remove", convert=names),
    F("objective", "eps (default) | trajectory | consistency (few-step, docs/fewstep.md)."),
    F("fewstep_steps", "Steps the few-step student is made for (trajectory: its grid)."),
    F("pair_starts", "trajectory: all (jumps from every cached state) | grid (only from the states its sampler visits)."),
    F("student_init", "random | teacher (a teacher-width student starts as the teacher) | a student folder of the same "
      "architecture (warm start, e.g. from an eps student)."),
)
EVALUATE = (
    F("students", "Student folder(s); repeat to compare several.", name="student", decls=("--student",), many=True,
      required=True),
    F("teacher"), F("out", "Report folder."), F("num_samples"), F("batch_size"), F("sampler__steps"),
    F("sampler__scheduler"), F("seed", "First evaluation sample index (noise seed 2^31 + index)."),
    F("seed_space", "evaluation (disjoint from trajectories) | trajectory (raw seeds)."),
    F("allow_seed_overlap", "Score students on seeds they were trained on.", decls=("--allow-seed-overlap",)),
    F("device"),
    F("reference", "auto | digits | teacher | image folder | webdataset .tar/URL | stats .npz"),
    F("features", "auto | digits | inception | package.module:factory"),
    F("inception", "clean-fid's inception-2015-12-05.pt (sha256-checked); env DKDM_INCEPTION.",
      extra=(("envvar", "DKDM_INCEPTION"),)),
    F("cache_root", "Where reference statistics are cached (default ./cache)."),
    F("speed_batch_sizes", "images/s at these batch sizes, e.g. 1,16,128.", convert=ints),
    F("sweep_schedulers", "Sweep these schedulers, e.g. ddpm,ddim,dpm++,euler.", convert=names),
    F("sweep_steps", "Sweep these step counts, e.g. 5,10,25.", convert=ints),
    F("sweep_samples", "Samples per sweep point."),
    F("target_fid", "Quality target for the cheapest-setting answer."),
    F("sweep_students", "Sweep the students too, or only the teacher's front.", decls=("--sweep-students/--sweep-teacher-only",)),
    F("own_samplers", "Also sample each student with its card's scheduler and steps.", decls=("--own-samplers/--no-own-samplers",)),
    F("confirm_front", "Score the teacher's front near each student's equal-FID crossing again on the main seeds.",
      decls=("--confirm-front/--no-confirm-front",)),
)
EVALUATE_T2I = (
    *pick(EVALUATE, "student", "teacher", "out", "num_samples", "batch_size", "steps", "scheduler", "seed", "reference",
          "device", "seed_space", "allow_seed_overlap", student="Student pipeline folder(s) from `dkdm distill`; repeat.",
          teacher="Latent text-to-image teacher (builtin:digits-t2i or a pipeline folder).",
          reference="auto (digits for 1x16x16) | digits | image folder | .tar | .npz"),
    F("speed_repeats", "Timed rounds (models take turns in each)."),
)
TUNE = (
    F("students", "[NAME=]student folder from `dkdm distill`; repeat.", name="student", decls=("--student",), many=True),
    F("teacher", "Teacher source (builtin:digits, builtin:digits-t2i, a folder)."),
    F("out", "Folder for tune.json, tune.md, PNGs, snippets and the study tune.db."),
    F("trials", "Finished trials in all (a rerun continues the study up to this).", extra=(("min", 1),)),
    F("seed", "Seed of the NSGA-II sampler."),
    F("population", "NSGA-II population per generation.", extra=(("min", 2),)),
    F("num_samples", "Quality samples per trial (FID, adherence).", extra=(("min", 2),)),
    F("bias_samples", "Text models: samples on the neutral prompts per trial.", extra=(("min", 1),)),
    F("batch_size", extra=(("min", 1),)),
    F("schedulers", "Scheduler kinds to search, e.g. ddim,dpm++ (default: all).", convert=names),
    F("steps", "Step counts to search, e.g. 5,10,25.", convert=ints),
    F("prompts", "Text models: subjects file, one prompt per line."),
    F("quality_factor", "Feasible: FID <= this x the default's.", extra=(("min", 1.0),)),
    F("energy", "auto | zeus | counter | none"),
    F("device"),
)
