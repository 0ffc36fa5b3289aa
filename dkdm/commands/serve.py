"""`dkdm serve` and `dkdm bench serve`: typer over dkdm.serve and dkdm.bench.serve."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from ..errors import DkdmError


def load_models(specs: list[str], device: str, dtype: str, compile: bool) -> dict:
    """Every model once, warmed up (first-call allocations, torch.compile) before the port opens."""
    from ..runtime import pick_device
    from ..serve.models import generate, load_served

    dev = pick_device(device)
    if dtype == "fp16" and dev.type == "cpu":
        raise DkdmError("--dtype fp16 is for GPUs; use fp32 or bf16 on the CPU")
    models = {}
    for spec in specs:
        m = load_served(spec, dev, dtype, compile)
        if m.name in models:
            raise DkdmError(f"two models are named {m.name!r}: name them, e.g. student2={m.source}")
        generate(m, [0], 2, "ddim", prompts=[""] if m.conditional else None)
        models[m.name] = m
    return models


def serve(
    model: List[str] = typer.Argument(..., help="[NAME=]SOURCE: builtin:digits, a pipeline folder, a `dkdm distill` student or run folder."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback unless you mean otherwise."),
    port: int = typer.Option(8000, min=0, max=65535),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (fp16 on GPU only)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the U-Nets (slow start)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (default: torch's)."),
    max_batch: int = typer.Option(16, min=1, help="Images per forward batch; 1 = no batching across requests."),
    max_wait_ms: float = typer.Option(10.0, min=0, help="How long a batch waits for the previous batch's clients to come back (never for a lone client)."),
    max_queue: int = typer.Option(64, min=1, help="Images waiting at most; more gets 429."),
    max_steps: int = typer.Option(100, min=1), max_images: int = typer.Option(16, min=1, help="Images per request."),
    max_body: int = typer.Option(16384, min=64, help="Request body bytes."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds a request may wait before 503."),
    exact: bool = typer.Option(False, "--exact", help="Pad batches to --max-batch: batched images bit-identical to single ones."),
):
    """Serve models over HTTP: POST /v1/generate, GET /v1/models /healthz /metrics, and a web page at /."""
    import torch

    from ..extras import require

    for module in ("starlette", "prometheus_client"):
        require(module, "dkdm serve")
    uvicorn = require("uvicorn", "dkdm serve")

    from ..evaluate.energy import open_counter
    from ..serve.app import build_app
    from ..serve.schema import Limits

    if threads:
        torch.set_num_threads(threads)
    models = load_models(list(model), device, dtype, compile)
    counter, why = open_counter(next(iter(models.values())).teacher.device)
    limits = Limits(max_steps=max_steps, max_images=max_images, max_body_bytes=max_body, max_queue=max_queue,
                    max_batch=max_batch, max_wait_ms=max_wait_ms, timeout_s=timeout, exact=exact)
    app = build_app(models, limits, counter=counter, threads=threads)
    typer.echo(f"serving {', '.join(models)} on http://{host}:{port}/  (energy: {counter.name if counter else why})")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def bench_serve(
    teacher: str = typer.Option("builtin:digits", help="Teacher model source."),
    student: str = typer.Option(..., help="Student folder (from `dkdm distill`)."),
    clients: str = typer.Option("1,4,16", help="Concurrent clients per run."),
    off_clients: Optional[str] = typer.Option(None, help="Client counts for batching off (default: --clients)."),
    seconds: float = typer.Option(8.0, min=0.5, help="Measured window per run (after --warmup)."),
    warmup: float = typer.Option(2.0, min=0, help="Seconds of load before each window, not counted."),
    steps: int = typer.Option(25, min=1), max_batch: int = typer.Option(16, min=1),
    threads: Optional[int] = typer.Option(None, min=1), port: int = typer.Option(0, help="0: a free loopback port."),
    compile: bool = typer.Option(False, "--compile", help="Serve with torch.compile (warm-up compiles before timing)."),
    max_wait_ms: Optional[float] = typer.Option(None, min=0, help="The server's --max-wait-ms (default: its default)."),
    memory_ceiling_mb: float = typer.Option(1024, help="Fail if the server's peak RSS goes above this."),
    out: str = typer.Option("docs/bench-serve.json", help="JSON results; the markdown goes to --md."),
    md: Optional[str] = typer.Option("docs/benchmarks.md", help="Markdown file whose 'Serve' section is (re)written."),
):
    """Load test on loopback: teacher vs student, batching on and off, 1/4/16 clients; images/s, p50/p95/p99, errors, RSS."""
    from ..extras import require

    require("httpx", "dkdm bench serve")
    from ..bench.serve import bench_serve as run, render, write_section
    from ..runtime import atomic_write_json

    def ints(text, flag):
        try:
            return [int(c) for c in text.split(",") if c.strip()]
        except ValueError:
            raise DkdmError(f"{flag} must be comma-separated integers, got {text!r}")

    counts = ints(clients, "--clients")
    off = ints(off_clients, "--off-clients") if off_clients is not None else None  # "" = no batching-off runs
    res = run(teacher=teacher, student=student, clients=counts, off_clients=off, seconds=seconds, warmup=warmup, steps=steps, max_batch=max_batch, compile=compile, max_wait_ms=max_wait_ms,
              threads=threads, port=port, memory_ceiling_mb=memory_ceiling_mb, log=typer.echo,
              command="dkdm bench serve " + " ".join(sys.argv[3:]))
    atomic_write_json(out, res)
    if md:
        write_section(md, render(res, out))
    typer.echo(json.dumps(res["summary"], indent=2))
    if res["peak_rss_mb"] > memory_ceiling_mb:
        raise DkdmError(f"server peak RSS {res['peak_rss_mb']:.0f} MB is over the ceiling {memory_ceiling_mb:.0f} MB")


def register(app: typer.Typer, friendly) -> None:
    app.command("serve")(friendly(serve))  # `dkdm bench serve` is registered by commands/bench.py
