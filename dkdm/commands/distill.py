"""`dkdm distill`: a student trained on teacher outputs, from a cache, a live teacher or both."""

from __future__ import annotations

import typer

from .options import DISTILL, command


def register(app: typer.Typer, friendly) -> None:
    @command(app, friendly, "distill", DISTILL)
    def distill(cfg, quiet: bool = typer.Option(False)):
        """Train a smaller student on teacher outputs (DKDM), from a cache, a live teacher, or both."""
        from ..distill.loop import distill as run

        res = run(cfg, progress=not quiet)
        typer.echo(f"student saved to {cfg.out}/student  final loss {res['final_loss']:.4f}  {res['records_per_s']:.0f} records/s")
