"""`dkdm demo`: generate -> distill -> evaluate on an embedded teacher, offline, in minutes on a CPU."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import DkdmError
from .evaluate import print_table
from .options import RECIPE_HELP


def register(app: typer.Typer, friendly) -> None:
    @app.command()
    @friendly
    def demo(out: str = typer.Option("runs/demo", help="Folder for cache/, student/, report.json."),
             recipe: str = typer.Option("digits", help=RECIPE_HELP), quiet: bool = typer.Option(False),
             teacher: Optional[str] = typer.Option(None, help="builtin:digits (default) | builtin:digits-t2i (text-to-image)")):
        """generate -> distill -> evaluate on the embedded digits teacher, offline, in minutes on a CPU."""
        from .t2i import T2I_RECIPES, run_t2i_demo

        if teacher in T2I_RECIPES:
            from ..evaluate.t2i import render

            report = run_t2i_demo(out, T2I_RECIPES[teacher] if recipe == "digits" else recipe, progress=not quiet, log=typer.echo)
            typer.echo(render(report))
            typer.echo(f"done in {report['demo']['timings']['total_s']:.0f}s; report: {out}/report.json, {out}/report.md")
            return
        if teacher not in (None, "builtin:digits"):
            raise DkdmError(f"dkdm demo runs builtin:digits or {', '.join(T2I_RECIPES)}, not {teacher!r}")
        from ..demo import run_demo

        report = run_demo(out, recipe, progress=not quiet, log=typer.echo)
        print_table(report)
        t = report["demo"]["timings"]
        typer.echo(f"done in {t['total_s']:.0f}s (generate {t['generate_s']:.0f}s, distill {t['distill_s']:.0f}s, "
                   f"evaluate {t['evaluate_s']:.0f}s); report: {out}/report.json, {out}/report.md")
