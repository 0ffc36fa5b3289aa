"""`dkdm evaluate`, and the teacher-vs-students table it (and `dkdm demo`) prints."""

from __future__ import annotations

import typer

from .options import EVALUATE, command


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


def register(app: typer.Typer, friendly) -> None:
    @command(app, friendly, "evaluate", EVALUATE)
    def evaluate(cfg, quiet: bool = typer.Option(False)):
        """Compare teacher and students: FID/KID, fidelity, speed, energy, sweeps; report.json, report.md, PNGs."""
        from ..evaluate.run import evaluate as run

        report = run(cfg, progress=not quiet)
        print_table(report)
        from ..demo import own_summary

        for line in own_summary(report):
            typer.echo(line)
        typer.echo(f"report: {cfg.out}/report.json, {cfg.out}/report.md")
