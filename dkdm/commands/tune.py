"""`dkdm tune`: typer over dkdm.tune.study.run_tune."""

from __future__ import annotations

import typer

from .options import TUNE, command


def register(app: typer.Typer, friendly) -> None:
    @command(app, friendly, "tune", TUNE)
    def tune(cfg, quiet: bool = typer.Option(False)):
        """Search sampler settings and prompt templates for quality, cost and bias at once (NSGA-II, resumable)."""
        from ..tune.study import run_tune

        report = run_tune(cfg, progress=not quiet, log=typer.echo)
        typer.echo(f"report: {cfg.out}/tune.json, {cfg.out}/tune.md (study {cfg.out}/tune.db)")
        return report
