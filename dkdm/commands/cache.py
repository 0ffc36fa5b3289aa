"""`dkdm cache info|verify|seal|ls`: inspect and check a synthetic-data cache."""

from __future__ import annotations

import json

import typer


def print_info(i: dict) -> None:
    """The human form of `dkdm.cache.inspect.info`."""
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


def register(app: typer.Typer, friendly) -> None:
    cache_app = typer.Typer(no_args_is_help=True, help="Inspect, verify and seal synthetic-data caches.")
    app.add_typer(cache_app, name="cache")

    @cache_app.command("info")
    @friendly
    def cache_info(cache: str = typer.Argument(..., help="Cache folder or URL."), as_json: bool = typer.Option(False, "--json")):
        """Teacher, sampler, records, bytes, shards and the timestep histogram."""
        from ..cache.inspect import info

        i = info(cache)
        if as_json:
            typer.echo(json.dumps(i, indent=2))
        else:
            print_info(i)

    @cache_app.command("verify")
    @friendly
    def cache_verify(cache: str = typer.Argument(...), deep: bool = typer.Option(False, help="Also decode every record.")):
        """Check every shard's size, sha256 (and with --deep its records); exit 1 naming each bad shard."""
        from ..cache.inspect import verify

        problems = verify(cache, deep=deep)
        for p in problems:
            typer.secho(f"BAD {p}", fg=typer.colors.RED, err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo(f"ok: every shard of {cache} matches the manifest")

    @cache_app.command("seal")
    @friendly
    def cache_seal(cache: str = typer.Argument(...),
                   force: bool = typer.Option(False, "--force", help="Write the index even if it drops shards the old manifest listed.")):
        """Rebuild the manifest's index from the shard sidecars (after many writers, or an interruption)."""
        from ..cache.manifest import seal
        from ..cache.store import Store

        m = seal(Store(cache), force=force)
        if m["dropped"]:
            typer.secho(f"warning: dropped {len(m['dropped'])} shard(s) the old manifest listed: {', '.join(m['dropped'][:5])}",
                        fg=typer.colors.YELLOW, err=True)
        typer.echo(f"sealed {cache}: {m['totals']['shards']} shards, {m['totals']['records']} records")

    @cache_app.command("ls")
    @friendly
    def cache_ls(cache: str = typer.Argument(...)):
        """One line per shard: name, trajectories, records, bytes, sha256."""
        from ..cache.inspect import ls

        for s in ls(cache):
            typer.echo(f"{s['file']}  traj {s['trajectories'][0]}-{s['trajectories'][1] - 1}  {s['records']} records  "
                       f"{s['bytes']} bytes  {s['sha256'][:16]}")
