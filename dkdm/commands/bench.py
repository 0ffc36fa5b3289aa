"""`dkdm bench distill|cache|serve`: measure the stages."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .options import DISTILL, command, pick
from .serve import bench_serve

BENCH_DISTILL = pick(DISTILL, "cache", "teacher", "batch_size", "num_workers", "device", required=("cache",),
                     cache="Cache to read (made by `dkdm generate` from --teacher).", teacher=None,
                     num_workers="DataLoader workers of the cache reader.")


def register(app: typer.Typer, friendly) -> None:
    bench_app = typer.Typer(no_args_is_help=True, help="Measure the stages: cache writing/reading, distillation.")
    app.add_typer(bench_app, name="bench")

    @command(bench_app, friendly, "distill", BENCH_DISTILL, name="distill", recipe_default="digits")
    def bench_distill_cmd(
        cfg,
        steps: int = typer.Option(100, help="Timed steps per mode and round."),
        rounds: int = typer.Option(3, help="Interleaved rounds; the median is reported."),
        md: str = typer.Option("docs/benchmarks.md", help="Markdown file whose 'Distill' section is (re)written."),
    ):
        """Distill step throughput from the cache vs tensors in memory vs a live teacher, in one run."""
        from ..bench.distill import bench_distill, render, write_section

        res = bench_distill(cfg, steps=steps, rounds=rounds, log=typer.echo)
        write_section(md, render(res, "dkdm bench distill " + " ".join(sys.argv[3:])))
        typer.echo(f"cache/in-memory {res['cache_vs_memory']:.2f}, live/in-memory {res['live_vs_memory']:.2f}; written to {md}")

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
        from ..bench.cache import bench_cache as run, markdown
        from ..runtime import atomic_write_json

        res = run(teacher=teacher, trajectories=trajectories, batch_size=batch_size, steps=steps, shard_size=shard_size,
                  dtype=dtype, repeats=repeats, device=device, log=typer.echo)
        if out:
            atomic_write_json(out, res)
        typer.echo(markdown(res))

    bench_app.command("serve")(friendly(bench_serve))
