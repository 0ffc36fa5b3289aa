"""The ASGI app: /v1/generate, /v1/models, /healthz, /metrics and the web page at /."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from pathlib import Path

import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..imaging import to_uint8
from .batcher import Batcher, QueueFull
from .metrics import Metrics
from .models import Served, generate
from .schema import BadRequest, Limits, parse

STATIC = Path(__file__).resolve().parent / "static"


def png_bytes(img) -> bytes:
    """One (H, W, C) uint8 image as PNG."""
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def make_runner(models: dict[str, Served], counter=None):
    """The compute-thread function the batcher calls: pads (exact mode), samples, measures joules where it can."""

    def run_batch(key, seeds, prompts, pad):
        name, steps, scheduler, eta, guidance = key
        real = len(seeds)
        if pad and real < pad:  # same batch size every time: a seed's image does not depend on its company
            seeds = seeds + [seeds[-1]] * (pad - real)
            prompts = prompts + [prompts[-1]] * (pad - real) if prompts else prompts
        token = counter.start() if counter else None
        x = generate(models[name], seeds, steps, scheduler, eta=eta, guidance=guidance, prompts=prompts)
        joules = counter.stop(token) if counter else None
        return to_uint8(x[:real]), joules

    return run_batch


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, None, f"body is {declared} bytes; the limit is {limit}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, None, f"body is over the limit of {limit} bytes")
    return body


def build_app(models: dict[str, Served], limits: Limits = Limits(), counter=None, threads: int | None = None) -> Starlette:
    metrics = Metrics(counter)
    init = (lambda: torch.set_num_threads(threads)) if threads else None  # the compute thread's own OpenMP pool
    batcher = Batcher(make_runner(models, counter), limits, metrics, init_thread=init)

    async def generate_endpoint(request: Request) -> Response:
        t0 = time.monotonic()
        model = "?"
        try:
            req, fmt = parse(await _read_body(request, limits.max_body_bytes), models, limits)
            model = req.model
            job = asyncio.ensure_future(batcher.submit(req))
            gone = asyncio.ensure_future(_until_disconnect(request))
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():  # the client went away: free its place in the queue
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
                metrics.request_done(model, 499, None)
                return Response(status_code=499)
            gone.cancel()
            images, batch_n, batch_s = job.result()
        except BadRequest as exc:
            metrics.request_done(model, exc.status, None)
            return JSONResponse(exc.body(), status_code=exc.status)
        except QueueFull as exc:
            metrics.request_done(model, 429, None)
            return JSONResponse(BadRequest(429, None, str(exc)).body(), status_code=429, headers={"Retry-After": "1"})
        except asyncio.TimeoutError:
            metrics.request_done(model, 503, None)
            msg = f"not served within {limits.timeout_s:g} s; the server is overloaded"
            return JSONResponse(BadRequest(503, None, msg).body(), status_code=503, headers={"Retry-After": "5"})
        except Exception as exc:  # a batch that failed on the compute thread
            metrics.request_done(model, 500, None)
            return await server_error(request, exc)
        seconds = time.monotonic() - t0
        metrics.request_done(model, 200, seconds)
        timing = {"total_ms": round(1000 * seconds, 2), "batch_ms": round(1000 * batch_s, 2), "batch_images": batch_n}
        if fmt == "png":
            return Response(png_bytes(images[0]), media_type="image/png",
                            headers={"X-Latency-Ms": str(timing["total_ms"]), "X-Batch-Images": str(batch_n)})
        return JSONResponse({"model": req.model, "seeds": req.seeds, "steps": req.steps, "scheduler": req.scheduler,
                             "prompt": req.prompt, "images": [base64.b64encode(png_bytes(im)).decode() for im in images],
                             "timing": timing})

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": [m.describe() for m in models.values()], "limits": limits.__dict__})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(models), "queue_images": batcher.queued_images})

    async def prom(request: Request) -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse(BadRequest(exc.status_code, None, exc.detail).body(), status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return JSONResponse(BadRequest(500, None, f"internal error: {first}").body(), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = Starlette(routes=[Route("/", index), Route("/v1/generate", generate_endpoint, methods=["POST"]),
                            Route("/v1/models", list_models), Route("/healthz", healthz), Route("/metrics", prom)],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.models = batcher, metrics, models
    return app
