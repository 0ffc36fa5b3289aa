"""The `dkdm` command: a thin typer layer over library functions."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import List, Optional

import typer

from . import config as cfgmod
from .errors import DkdmError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Data-free knowledge distillation of diffusion models.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect, verify and seal synthetic-data caches.")
app.add_typer(cache_app, name="cache")
bench_app = typer.Typer(no_args_is_help=True, help="Measure the stages: cache writing/reading, distillation.")
app.add_typer(bench_app, name="bench")

RECIPE_HELP = "TOML recipe (path, or name in pipelines/); flags override it."
COVERAGE_HELP = "Timesteps visited: offsets (grid shifted per trajectory: all T) | grid | full (DDPM, T steps)."


def debugging() -> bool:
    return os.environ.get("DKDM_DEBUG", "") not in ("", "0")


def friendly(fn):
    """Users see one line and a non-zero exit for errors they can fix, never a traceback (DKDM_DEBUG=1 or
    --debug shows it). OS errors (a read-only --out, a full disk, a missing file) are the user's to fix too;
    anything else is a bug of ours and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            typer.secho(f"interrupted by signal {exc.signum}", err=True)
            raise typer.Exit(128 + exc.signum)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(130)
        except (DkdmError, OSError, MemoryError) as exc:
            if debugging():
                raise
            typer.secho(f"error: {one_line(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)

    return wrapper


def one_line(exc: BaseException) -> str:
    if isinstance(exc, DkdmError):
        return " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller sizes (--batch-size, --trajectories)"
    if isinstance(exc, OSError) and exc.filename is not None:  # PermissionError, FileNotFoundError, ENOSPC...
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also: DKDM_DEBUG=1).")):
    """Data-free knowledge distillation of diffusion models."""
    if debug:
        os.environ["DKDM_DEBUG"] = "1"


def _sampler(section, scheduler, steps, eta):
    return cfgmod.override(section, scheduler=scheduler, steps=steps, eta=eta)


@app.command()
@friendly
def train(
    recipe: Optional[str] = typer.Option(None, help=RECIPE_HELP),
    out: Optional[str] = typer.Option(None, help="Output folder (DDPMPipeline layout)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
):
    """Train a diffusion model on real images (digits): the embedded teacher and the data baseline."""
    from .train import train_teacher

    cfg = cfgmod.override(cfgmod.load_recipe(recipe).train, out=out, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
    summary = train_teacher(cfg)
    typer.echo(f"saved {cfg.out}  final loss {summary['final_loss']:.4f}  {summary['seconds']:.0f}s")


@app.command("train-features")
@friendly
def train_features(out: Optional[str] = typer.Option(None, help="Folder (default: the builtin one)."),
                   epochs: int = typer.Option(40, min=1), seed: int = 0):
    """Train the digits classifier whose penultimate features serve FID/KID on digits."""
    from .evaluate.digits_features import BUILTIN, train_digits_classifier

    meta = train_digits_classifier(out or BUILTIN, epochs=epochs, seed=seed)
    typer.echo(f"held-out accuracy {meta['held_out_accuracy']:.4f} on {meta['held_out']} digits")


@app.command()
@friendly
def generate(
    recipe: Optional[str] = typer.Option(None, help=RECIPE_HELP),
    teacher: Optional[str] = typer.Option(None, help="builtin:digits | local folder | hub id (org/name)."),
    out: Optional[str] = typer.Option(None, help="Cache location: folder or fsspec URL (s3://...)."),
    trajectories: Optional[int] = typer.Option(None, help="Number of teacher trajectories (seeds)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps per trajectory."),
    scheduler: Optional[str] = typer.Option(None, help="ddim | ddpm | dpm++ | euler | lcm"),
    eta: Optional[float] = typer.Option(None, help="DDIM eta (0 = deterministic)."),
    keep: Optional[str] = typer.Option(None, help="Steps kept as records: all | every:K | first:N | last:N | i,j,k"),
    shard_size: Optional[int] = typer.Option(None, help="Trajectories per shard."),
    seed: Optional[int] = typer.Option(None, help="Base seed: trajectory i uses seed*2^32+i."),
    batch_size: Optional[int] = typer.Option(None, help="Trajectories walked together."),
    dtype: Optional[str] = typer.Option(None, help="Record dtype: float16 | bfloat16 | float32."),
    format: Optional[str] = typer.Option(None, "--format", help="Shard backend: wds (tar shards) | wds-gz (gzipped tar shards) | zarr (trajectories.zarr)."),
    prompts: Optional[str] = typer.Option(None, help="Text-conditioned teachers: file with one prompt per line."),
    guidance_scale: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (1 = none)."),
    coverage: Optional[str] = typer.Option(None, help=COVERAGE_HELP),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Walk teacher trajectories and write them to a synthetic-data cache (resumable, many writers)."""
    from accelerate import PartialState

    from .generate import generate as run

    r = cfgmod.load_recipe(recipe).generate
    cfg = cfgmod.override(r, teacher=teacher, out=out, trajectories=trajectories, keep=keep, shard_size=shard_size,
                          seed=seed, batch_size=batch_size, dtype=dtype, device=device, format=format, prompts=prompts,
                          guidance_scale=guidance_scale)
    cfg = cfgmod.override(cfg, sampler=_sampler(cfg.sampler, scheduler, steps, eta), sampler__coverage=coverage)
    state = PartialState(cpu=cfg.device == "cpu")
    res = run(cfg, rank=state.process_index, world=state.num_processes, progress=not quiet,
              barrier=state.wait_for_everyone if state.num_processes > 1 else None)
    if state.is_main_process:
        typer.echo(f"cache {res['cache']} ({res['cache_id']}): wrote {res['shards_written']} shards, "
                   f"skipped {res['shards_skipped']} complete; {res['total_records']} records in total; "
                   f"{res['records_per_s']:.0f} records/s")


@app.command()
@friendly
def distill(
    recipe: Optional[str] = typer.Option(None, help=RECIPE_HELP),
    teacher: Optional[str] = typer.Option(None, help="Teacher (required for live; checks the cache's fingerprint)."),
    cache: Optional[str] = typer.Option(None, help="Cache folder or URL to read records from."),
    source: Optional[str] = typer.Option(None, help="cache | live | both"),
    out: Optional[str] = typer.Option(None, help="Run folder; the student goes to OUT/student."),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    pool: Optional[str] = typer.Option(None, help="Live pool: iterative | shuffled | dynamic"),
    rho: Optional[float] = typer.Option(None, help="Pool size factor: rho*T*b samples."),
    sampler_steps: Optional[int] = typer.Option(None, "--sampler-steps", help="Live teacher: steps T of its schedule."),
    coverage: Optional[str] = typer.Option(None, help="Live teacher: " + COVERAGE_HELP),
    shuffle_buffer: Optional[int] = typer.Option(None),
    num_workers: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
    real: Optional[str] = typer.Option(None, help="Real images to mix in: digits | folder of PNG/JPG | webdataset .tar."),
    real_ratio: Optional[float] = typer.Option(None, help="Share of each batch from --real (1 = plain data training)."),
    pool_init: Optional[str] = typer.Option(None, help="Live pool start: teacher (walk it) | cache (seed from records)."),
    kl_weight: Optional[float] = typer.Option(None, help="Weight of KL(p_T||p_S) in bits/dim per term (learned-variance teachers; default 1, as DKDM)."),
    feature_kd: Optional[float] = typer.Option(None, help="Weight of block-output MSE (live teacher, matching blocks)."),
    mixed_precision: Optional[str] = typer.Option(None, help="no | fp16 | bf16"),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (0: end and Ctrl-C only)."),
    checkpoints_keep: Optional[int] = typer.Option(None, help="Newest checkpoints kept (<= 0 keeps all)."),
    resume: Optional[str] = typer.Option(None, help="latest | OUT/checkpoints/step-N"),
    sample_every: Optional[int] = typer.Option(None, help="Sample grid PNG every N steps."),
    export_ema: Optional[bool] = typer.Option(None, "--export-ema/--export-raw", help="Export EMA (default) or raw weights."),
    tracker: Optional[str] = typer.Option(None, help="tensorboard | none"),
    on_bad_shard: Optional[str] = typer.Option(None, help="stop (default) | skip: a damaged cache shard stops the run, or is skipped with a warning."),
    student: Optional[str] = typer.Option(None, help="narrow | blocks | transformer | a preset: bk-base, bk-small, "
                                                      "bk-tiny, ssd, vega (docs/students.md)."),
    remove: Optional[str] = typer.Option(None, help="blocks: parts to remove, e.g. mid,stage.1.attn (`dkdm students parts`)."),
    objective: Optional[str] = typer.Option(None, help="eps (default) | trajectory | consistency (few-step, docs/fewstep.md)."),
    fewstep_steps: Optional[int] = typer.Option(None, help="Steps the few-step student is made for (trajectory: its grid)."),
    student_init: Optional[str] = typer.Option(None, help="random | teacher (a teacher-width student starts as the teacher)."),
    quiet: bool = typer.Option(False),
):
    """Train a smaller student on teacher outputs (DKDM), from a cache, a live teacher, or both."""
    from .distill.loop import distill as run

    r = cfgmod.load_recipe(recipe).distill
    cfg = cfgmod.override(r, teacher=teacher, cache=cache, source=source, out=out, steps=steps, batch_size=batch_size,
                          lr=lr, pool=pool, rho=rho, shuffle_buffer=shuffle_buffer, num_workers=num_workers, seed=seed,
                          device=device, sampler__steps=sampler_steps, sampler__coverage=coverage, real=real, real_ratio=real_ratio, pool_init=pool_init,
                          kl_weight=kl_weight, feature_kd=feature_kd, mixed_precision=mixed_precision, grad_accum=grad_accum,
                          checkpoint_every=checkpoint_every, checkpoints_keep=checkpoints_keep, resume=resume,
                          sample_every=sample_every, export_ema=export_ema, tracker=tracker, on_bad_shard=on_bad_shard,
                          student_kind=student, student_remove=_names(remove), objective=objective,
                          fewstep_steps=fewstep_steps, student_init=student_init)
    res = run(cfg, progress=not quiet)
    typer.echo(f"student saved to {cfg.out}/student  final loss {res['final_loss']:.4f}  {res['records_per_s']:.0f} records/s")


def _ints(text: Optional[str], what: str) -> Optional[list]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DkdmError(f"{what} must be comma-separated integers, got {text!r}")


def _names(text: Optional[str]) -> Optional[list]:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


@app.command()
@friendly
def evaluate(
    student: List[str] = typer.Option(..., "--student", help="Student folder(s); repeat to compare several."),
    recipe: Optional[str] = typer.Option(None, help=RECIPE_HELP),
    teacher: Optional[str] = typer.Option(None),
    out: Optional[str] = typer.Option(None, help="Report folder."),
    num_samples: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    steps: Optional[int] = typer.Option(None),
    scheduler: Optional[str] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
    reference: Optional[str] = typer.Option(None, help="auto | digits | teacher | image folder | webdataset .tar/URL | stats .npz"),
    features: Optional[str] = typer.Option(None, help="auto | digits | inception | package.module:factory"),
    inception: Optional[str] = typer.Option(None, envvar="DKDM_INCEPTION",
                                            help="clean-fid's inception-2015-12-05.pt (sha256-checked); env DKDM_INCEPTION."),
    cache_root: Optional[str] = typer.Option(None, help="Where reference statistics are cached (default ./cache)."),
    speed_batch_sizes: Optional[str] = typer.Option(None, help="images/s at these batch sizes, e.g. 1,16,128."),
    sweep_schedulers: Optional[str] = typer.Option(None, help="Sweep these schedulers, e.g. ddpm,ddim,dpm++,euler."),
    sweep_steps: Optional[str] = typer.Option(None, help="Sweep these step counts, e.g. 5,10,25."),
    sweep_samples: Optional[int] = typer.Option(None, help="Samples per sweep point."),
    target_fid: Optional[float] = typer.Option(None, help="Quality target for the cheapest-setting answer."),
    sweep_students: Optional[bool] = typer.Option(None, "--sweep-students/--sweep-teacher-only",
                                                  help="Sweep the students too, or only the teacher's front."),
    own_samplers: Optional[bool] = typer.Option(None, "--own-samplers/--no-own-samplers",
                                                help="Also sample each student with its card's scheduler and steps."),
    quiet: bool = typer.Option(False),
):
    """Compare teacher and students: FID/KID, fidelity, speed, energy, sweeps; report.json, report.md, PNGs."""
    from .evaluate.run import evaluate as run

    r = cfgmod.load_recipe(recipe).evaluate
    cfg = cfgmod.override(r, students=list(student), teacher=teacher, out=out, num_samples=num_samples,
                          batch_size=batch_size, seed=seed, device=device, reference=reference, features=features,
                          inception=inception, cache_root=cache_root,
                          speed_batch_sizes=_ints(speed_batch_sizes, "--speed-batch-sizes"),
                          sweep_schedulers=_names(sweep_schedulers), sweep_steps=_ints(sweep_steps, "--sweep-steps"),
                          sweep_samples=sweep_samples, target_fid=target_fid, sweep_students=sweep_students,
                          own_samplers=own_samplers)
    cfg = cfgmod.override(cfg, sampler=_sampler(cfg.sampler, scheduler, steps, None))
    report = run(cfg, progress=not quiet)
    print_table(report)
    from .demo import own_summary

    for line in own_summary(report):
        typer.echo(line)
    typer.echo(f"report: {cfg.out}/report.json, {cfg.out}/report.md")


@app.command()
@friendly
def demo(out: str = typer.Option("runs/demo", help="Folder for cache/, student/, report.json."),
         recipe: str = typer.Option("digits", help=RECIPE_HELP), quiet: bool = typer.Option(False),
         teacher: Optional[str] = typer.Option(None, help="builtin:digits (default) | builtin:digits-t2i (text-to-image)")):
    """generate -> distill -> evaluate on the embedded digits teacher, offline, in minutes on a CPU."""
    from .commands.t2i import T2I_RECIPES, run_t2i_demo
    from .demo import run_demo

    if teacher in T2I_RECIPES:
        report = run_t2i_demo(out, T2I_RECIPES[teacher] if recipe == "digits" else recipe, progress=not quiet, log=typer.echo)
        from .evaluate.t2i import render

        typer.echo(render(report))
        typer.echo(f"done in {report['demo']['timings']['total_s']:.0f}s; report: {out}/report.json, {out}/report.md")
        return
    if teacher not in (None, "builtin:digits"):
        raise DkdmError(f"dkdm demo runs builtin:digits or {', '.join(T2I_RECIPES)}, not {teacher!r}")
    report = run_demo(out, recipe, progress=not quiet, log=typer.echo)
    print_table(report)
    t = report["demo"]["timings"]
    typer.echo(f"done in {t['total_s']:.0f}s (generate {t['generate_s']:.0f}s, distill {t['distill_s']:.0f}s, "
               f"evaluate {t['evaluate_s']:.0f}s); report: {out}/report.json, {out}/report.md")


@bench_app.command("distill")
@friendly
def bench_distill_cmd(
    cache: str = typer.Option(..., help="Cache to read (made by `dkdm generate` from --teacher)."),
    recipe: Optional[str] = typer.Option("digits", help=RECIPE_HELP),
    teacher: Optional[str] = typer.Option(None),
    steps: int = typer.Option(100, help="Timed steps per mode and round."),
    rounds: int = typer.Option(3, help="Interleaved rounds; the median is reported."),
    batch_size: Optional[int] = typer.Option(None),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader workers of the cache reader."),
    device: Optional[str] = typer.Option(None),
    md: str = typer.Option("docs/benchmarks.md", help="Markdown file whose 'Distill' section is (re)written."),
):
    """Distill step throughput from the cache vs tensors in memory vs a live teacher, in one run."""
    from .bench.distill import bench_distill, render, write_section

    cfg = cfgmod.override(cfgmod.load_recipe(recipe).distill, cache=cache, teacher=teacher, batch_size=batch_size,
                          num_workers=num_workers, device=device)
    res = bench_distill(cfg, steps=steps, rounds=rounds, log=typer.echo)
    write_section(md, render(res, "dkdm bench distill " + " ".join(sys.argv[3:])))
    typer.echo(f"cache/in-memory {res['cache_vs_memory']:.2f}, live/in-memory {res['live_vs_memory']:.2f}; written to {md}")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"teacher vs student ({report['sampler']['class']}, {report['sampler']['steps']} steps, "
                        f"{report['num_samples']} samples)")
    for col in ("model", "FID", "FID / teacher", "KID x10^3", "images/s", "speed-up", "params", "GFLOPs/img"):
        table.add_column(col, justify="right" if col != "model" else "left")
    t_ips, t_fid = report["teacher"]["images_per_s"], report["teacher"]["fid"]
    for name, r in [("teacher", report["teacher"]), *report["students"].items()]:
        table.add_row(name, f"{r['fid']:.2f}", f"{r['fid'] / t_fid:.2f}x" if t_fid else "n/a",
                      "n/a" if r["kid"] is None else f"{1e3 * r['kid']:.2f}", f"{r['images_per_s']:.1f}",
                      f"{r['images_per_s'] / t_ips:.2f}x", f"{r['params']:,}", f"{r['flops_per_image'] / 1e9:.3f}")
    if report["teacher"]["kid"] is not None:  # the teacher's own distance to the reference: the floor a student sits on
        table.caption = (f"KID x10^3 floor, teacher vs {report['reference']['name']}: {1e3 * report['teacher']['kid']:.2f} "
                         "(read a student's KID against it, not against 0)")
    Console().print(table)


@cache_app.command("info")
@friendly
def cache_info(cache: str = typer.Argument(..., help="Cache folder or URL."), as_json: bool = typer.Option(False, "--json")):
    """Teacher, sampler, records, bytes, shards and the timestep histogram."""
    from .cache.inspect import info

    i = info(cache)
    if as_json:
        typer.echo(json.dumps(i, indent=2))
        return
    typer.echo(f"cache     {i['cache']}  id {i['cache_id']}  {i['backend']}  sealed {i['sealed_at']}")
    typer.echo(f"teacher   {i['teacher']['source']} ({i['teacher']['class']}, fingerprint {i['teacher']['fingerprint'][:16]}…)")
    s = i["sampler"]
    typer.echo(f"sampler   {i['scheduler']} {s['steps']} steps, eta {s['eta']}, keep {s['keep']}, seed {s['base_seed']}, {s['dtype']}, "
               f"coverage {s.get('coverage', 'grid')}")
    if i["conditioning"]:
        typer.echo(f"prompts   {i['conditioning']['rows']} unique, embeddings {i['conditioning']['seq']}x{i['conditioning']['dim']} "
                   f"in {i['conditioning']['path']}, guidance {s['guidance_scale']}")
    typer.echo(f"records   {i['records']:,} from {i['trajectories']:,} trajectories in {i['shards']} shards")
    if i["bytes_per_record"]:
        typer.echo(f"bytes     {i['bytes']:,} ({i['bytes_per_record']:.0f} per record; raw fp32 {i['raw_fp32_bytes_per_record']}, "
                   f"ratio {i['bytes_per_record'] / i['raw_fp32_bytes_per_record']:.2f})")
    if i["t_hist"]:
        peak = max(i["t_hist"].values())
        typer.echo("timesteps")
        for t, n in i["t_hist"].items():
            typer.echo(f"  t={int(t):5d} {n:8d} {'#' * max(1, round(30 * n / peak))}")


@cache_app.command("verify")
@friendly
def cache_verify(cache: str = typer.Argument(...), deep: bool = typer.Option(False, help="Also decode every record.")):
    """Check every shard's size, sha256 (and with --deep its records); exit 1 naming each bad shard."""
    from .cache.inspect import verify

    problems = verify(cache, deep=deep)
    for p in problems:
        typer.secho(f"BAD {p}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: every shard of {cache} matches the manifest")


@cache_app.command("seal")
@friendly
def cache_seal(cache: str = typer.Argument(...)):
    """Rebuild the manifest's index from the shard sidecars (after many writers, or an interruption)."""
    from .cache.manifest import seal
    from .cache.store import Store

    m = seal(Store(cache))
    typer.echo(f"sealed {cache}: {m['totals']['shards']} shards, {m['totals']['records']} records")


@cache_app.command("ls")
@friendly
def cache_ls(cache: str = typer.Argument(...)):
    """One line per shard: name, trajectories, records, bytes, sha256."""
    from .cache.inspect import ls

    for s in ls(cache):
        typer.echo(f"{s['file']}  traj {s['trajectories'][0]}-{s['trajectories'][1] - 1}  {s['records']} records  "
                   f"{s['bytes']} bytes  {s['sha256'][:16]}")


@bench_app.command("cache")
@friendly
def bench_cache(
    teacher: str = typer.Option("builtin:digits", help="Teacher to generate with."),
    trajectories: int = typer.Option(256, min=1), batch_size: int = typer.Option(128, min=1),
    steps: int = typer.Option(25, min=1, help="DDIM steps per trajectory (every step kept)."),
    shard_size: int = typer.Option(128, min=1), dtype: str = typer.Option("float16"),
    repeats: int = typer.Option(2, min=1, help="Runs of each measurement; the best counts."),
    device: str = typer.Option("auto"), out: Optional[str] = typer.Option(None, help="Also write the results as JSON here."),
):
    """Generate vs bare teacher throughput, read records/s per backend vs the distiller, bytes per record."""
    from .bench.cache import bench_cache as run, markdown
    from .runtime import atomic_write_json

    res = run(teacher=teacher, trajectories=trajectories, batch_size=batch_size, steps=steps, shard_size=shard_size,
              dtype=dtype, repeats=repeats, device=device, log=typer.echo)
    if out:
        atomic_write_json(out, res)
    typer.echo(markdown(res))


from .commands import serve as _serve  # noqa: E402
from .commands import t2i as _t2i  # noqa: E402
from .commands.students import students_app  # noqa: E402  (issue 11)

_t2i.register(app, friendly)
app.command("serve")(friendly(_serve.serve))
bench_app.command("serve")(friendly(_serve.bench_serve))
app.add_typer(students_app, name="students")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
