"""`dkdm tune`: typer over dkdm.tune.study.run_tune."""

from __future__ import annotations

from typing import List, Optional

import typer

from .. import config as cfgmod
from ..errors import DkdmError


def _list(text: Optional[str], what: str, kind=str) -> Optional[list]:
    if text is None:
        return None
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise DkdmError(f"{what} takes a comma-separated list of {kind.__name__}s, got {text!r}") from exc


def tune_cmd(
    student: List[str] = typer.Option([], "--student", help="[NAME=]student folder from `dkdm distill`; repeat."),
    recipe: Optional[str] = typer.Option(None, help="TOML recipe (path, or name in pipelines/); its tune section; flags override it."),
    teacher: Optional[str] = typer.Option(None, help="Teacher source (builtin:digits, builtin:digits-t2i, a folder)."),
    out: Optional[str] = typer.Option(None, help="Folder for tune.json, tune.md, PNGs, snippets and the study tune.db."),
    trials: Optional[int] = typer.Option(None, min=1, help="Finished trials in all (a rerun continues the study up to this)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the NSGA-II sampler."),
    population: Optional[int] = typer.Option(None, min=2, help="NSGA-II population per generation."),
    num_samples: Optional[int] = typer.Option(None, min=2, help="Quality samples per trial (FID, adherence)."),
    bias_samples: Optional[int] = typer.Option(None, min=1, help="Text models: samples on the neutral prompts per trial."),
    batch_size: Optional[int] = typer.Option(None, min=1),
    schedulers: Optional[str] = typer.Option(None, help="Scheduler kinds to search, e.g. ddim,dpm++ (default: all)."),
    steps: Optional[str] = typer.Option(None, help="Step counts to search, e.g. 5,10,25."),
    prompts: Optional[str] = typer.Option(None, help="Text models: subjects file, one prompt per line."),
    quality_factor: Optional[float] = typer.Option(None, min=1.0, help="Feasible: FID <= this x the default's."),
    energy: Optional[str] = typer.Option(None, help="auto | zeus | counter | none"),
    device: Optional[str] = typer.Option(None),
    quiet: bool = typer.Option(False),
):
    """Search sampler settings and prompt templates for quality, cost and bias at once (NSGA-II, resumable)."""
    from ..tune.study import run_tune

    cfg = cfgmod.load_recipe(recipe).tune
    cfg = cfgmod.override(cfg, teacher=teacher, out=out, trials=trials, seed=seed, population=population,
                          num_samples=num_samples, bias_samples=bias_samples, batch_size=batch_size, prompts=prompts,
                          quality_factor=quality_factor, energy=energy, device=device,
                          students=list(student) or None, schedulers=_list(schedulers, "--schedulers"),
                          steps=_list(steps, "--steps", int))
    report = run_tune(cfg, progress=not quiet, log=typer.echo)
    typer.echo(f"report: {cfg.out}/tune.json, {cfg.out}/tune.md (study {cfg.out}/tune.db)")
    return report


def register(app: typer.Typer, friendly) -> None:
    app.command("tune")(friendly(tune_cmd))
