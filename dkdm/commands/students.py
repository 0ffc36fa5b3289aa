"""`dkdm students`: list the parts of a teacher a blocks student can drop, and scan their importance on a cache."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer, friendly) -> None:
    students_app = typer.Typer(no_args_is_help=True, help="Students made from the teacher: removable parts, layer scan.")
    app.add_typer(students_app, name="students")

    @students_app.command("parts")
    @friendly
    def parts_cmd(teacher: str = typer.Option("builtin:digits", help="Teacher (builtin:digits | folder | hub id).")):
        """The parts a blocks student can remove from TEACHER, and what each preset removes."""
        from ..students.blocks import PRESETS, expand, removable_parts
        from ..errors import DkdmError
        from ..teacher import load_teacher

        unet = load_teacher(teacher, "cpu").unet
        cfg = {**dict(unet.config), "_class_name": type(unet).__name__}
        typer.echo("parts:   " + ", ".join(removable_parts(cfg)))
        for p in PRESETS:
            try:
                removed, notes = expand([p], cfg)
                typer.echo(f"{p:8s} removes {', '.join(removed)}" + (f"  ({'; '.join(notes)})" if notes else ""))
            except DkdmError as exc:
                typer.echo(f"{p:8s} not representable: {exc}")

    @students_app.command("scan")
    @friendly
    def scan_cmd(
        cache: str = typer.Option(..., help="Cache made by `dkdm generate` from --teacher."),
        teacher: str = typer.Option("builtin:digits", help="The teacher whose parts are scanned."),
        out: str = typer.Option("runs/scan", help="Folder for scan.json, scan.md, scan.png (and recipe.toml)."),
        records: int = typer.Option(1024, min=1, help="Cached records every candidate is scored on."),
        batch_size: int = typer.Option(256, min=1),
        repeats: int = typer.Option(5, min=1, help="Timed forwards per candidate (median)."),
        budget_params: Optional[float] = typer.Option(None, help="Emit a recipe for a student with at most this fraction "
                                                                 "of the teacher's parameters, e.g. 0.5."),
        budget_flops: Optional[float] = typer.Option(None, help="... and/or at most this fraction of its FLOPs."),
        recipe: Optional[str] = typer.Option(None, help="Base recipe the emitted recipe.toml extends."),
        device: str = typer.Option("auto"),
        quiet: bool = typer.Option(False),
    ):
        """Remove each part alone (kept weights inherited), rank by eps-MSE increase on cached records; with a budget,
        remove the cheapest parts until it fits and write OUT/recipe.toml for `dkdm distill --recipe`."""
        from ..students.scan import scan

        res = scan(teacher, cache, out, records=records, batch_size=batch_size, repeats=repeats, budget_params=budget_params,
                   budget_flops=budget_flops, base_recipe=recipe, device=device, progress=not quiet)
        for p in res["ranked"]:
            r = res["parts"][p]
            typer.echo(f"{p:16s} eps-MSE +{r['loss_increase']:.5f}  params {r['params_ratio']:.2f}  FLOPs {r['flops_ratio']:.2f}  "
                       f"latency {r['latency_ms_ratio']:.2f}")
        if "budget" in res:
            b = res["budget"]
            typer.echo(f"budget: remove {', '.join(b['removed'])} -> params {b['params_ratio']:.2f}, FLOPs "
                       f"{b['flops_ratio']:.2f}; recipe {b['recipe']}")
        typer.echo(f"written {out}/scan.json, scan.md, scan.png")
