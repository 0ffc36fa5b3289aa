"""`dkdm generate`: teacher trajectories into a synthetic-data cache, on one process or many."""

from __future__ import annotations

import typer

from .options import GENERATE, command


def register(app: typer.Typer, friendly) -> None:
    @command(app, friendly, "generate", GENERATE)
    def generate(cfg, quiet: bool = typer.Option(False, help="No progress bar.")):
        """Walk teacher trajectories and write them to a synthetic-data cache (resumable, many writers)."""
        from ..generate import generate as run
        from ..runtime import distributed_state

        state = distributed_state(cfg.device, "generate")
        res = run(cfg, rank=state.process_index, world=state.num_processes, progress=not quiet,
                  barrier=state.wait_for_everyone if state.num_processes > 1 else None)
        if state.is_main_process:
            typer.echo(f"cache {res['cache']} ({res['cache_id']}): wrote {res['shards_written']} shards, "
                       f"skipped {res['shards_skipped']} complete; {res['total_records']} records in total; "
                       f"{res['records_per_s']:.0f} records/s")
