"""`dkdm bench serve`: a bounded closed-loop load test of `dkdm serve` on loopback.

The server runs as its own process (its peak RSS is read from /proc), holding teacher and student; for each
client count, clients send requests back to back for a fixed time window, teacher and student in turns.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from ..errors import DkdmError
from .markdown import replace_section

SECTION = "## Serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise DkdmError("cannot read peak RSS: /proc/PID/status has no VmHWM (Linux only)")


def start_server(models: list[str], port: int, extra: list[str], wait_s: float = 900) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dkdm.cli", "serve", *models, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < wait_s:
        if proc.poll() is not None:
            raise DkdmError(f"server did not start: {(proc.stdout.read().strip().splitlines() or ['?'])[-1]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise DkdmError(f"server not ready within {wait_s:.0f} s")


def busy_seconds(port: int, model: str) -> float:
    """Seconds the server's compute thread has spent on this model's batches (from /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    m = re.search(rf'^dkdm_batch_seconds_sum{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def load(url: str, body: dict, clients: int, seconds: float, warmup: float) -> dict:
    """Clients post back to back; requests that start inside the window after `warmup` are counted."""
    lat, batch, codes, images = [], [], {}, 0
    t_start = time.monotonic()
    w0, w1 = t_start + warmup, t_start + warmup + seconds

    async def client(i: int, http: httpx.AsyncClient):
        nonlocal images
        seed = 1000 * i
        while (t := time.monotonic()) < w1:
            r = await http.post(url, json={**body, "seed": seed})
            done = time.monotonic()
            seed += body.get("n", 1)
            if t < w0:
                continue
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                lat.append(done - t)
                images += body.get("n", 1)
                batch.append(r.json()["timing"]["batch_images"])

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.monotonic() - w0  # the window plus the tail of requests started inside it
    ok = codes.get(200, 0)
    return {"clients": clients, "requests": sum(codes.values()), "errors": sum(codes.values()) - ok,
            "codes": {str(k): v for k, v in sorted(codes.items())}, "images": images, "seconds": wall,
            "images_per_s": images / wall, "p50_ms": 1000 * _pct(lat, 0.5) if lat else None,
            "p95_ms": 1000 * _pct(lat, 0.95) if lat else None, "p99_ms": 1000 * _pct(lat, 0.99) if lat else None,
            "mean_batch_images": statistics.fmean(batch) if batch else None}


def bench_serve(teacher: str, student: str, clients: list[int], off_clients: list[int] | None = None,
                seconds: float = 8.0, warmup: float = 2.0,
                steps: int = 25, max_batch: int = 16, threads: int | None = None, port: int = 0, compile: bool = False,
                max_wait_ms: float | None = None,
                memory_ceiling_mb: float = 1024, log=print, command: str = "") -> dict:
    if not clients or min(clients) < 1:
        raise DkdmError(f"--clients must be positive integers, got {clients}")
    threads = threads or min(2, os.cpu_count() or 1)
    runs, rss, load_before = [], {}, os.getloadavg()
    for batching, mb in (("on", max_batch), ("off", 1)):
        if batching == "off" and off_clients == []:
            continue
        p = port or free_port()
        extra = ["--max-batch", str(mb), "--threads", str(threads), "--max-queue", str(max(64, 2 * max(clients))),
                 "--timeout", "300"] + (["--compile"] if compile else []) \
            + (["--max-wait-ms", str(max_wait_ms)] if max_wait_ms is not None else [])
        proc = start_server([f"teacher={teacher}", f"student={student}"], p, extra)
        try:
            url = f"http://127.0.0.1:{p}/v1/generate"
            for c in (clients if batching == "on" or off_clients is None else off_clients):
                for model in ("teacher", "student"):  # in turns: load from elsewhere hits both alike
                    busy0 = busy_seconds(p, model)
                    r = asyncio.run(load(url, {"model": model, "steps": steps, "n": 1}, c, seconds, warmup))
                    # share of the run the compute thread was busy (warm-up included on both sides: a diagnostic)
                    busy = (busy_seconds(p, model) - busy0) / (r["seconds"] + warmup)
                    r |= {"model": model, "batching": batching, "max_batch": mb, "compute_busy": busy}
                    runs.append(r)
                    log(f"batching {batching:3s} clients {c:3d} {model:8s} {r['images_per_s']:7.1f} img/s  "
                        f"p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                        f"errors {r['errors']}  mean batch {r['mean_batch_images']:.1f}  busy {busy:.2f}")
            rss[batching] = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"runs": runs, "summary": summarize(runs), "peak_rss_mb": max(rss.values()), "peak_rss_mb_per_server": rss,
            "memory_ceiling_mb": memory_ceiling_mb, "steps": steps, "scheduler": "ddim", "seconds_per_run": seconds,
            "warmup_s": warmup, "threads": threads, "compile": compile, "max_wait_ms": max_wait_ms, "teacher": teacher, "student": student, "command": command,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "torch": torch.__version__,
                        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d")}


def summarize(runs: list[dict]) -> dict:
    """Student/teacher images/s at the same client count, and at equal p95: the student's best throughput
    whose p95 is no worse than the teacher's at that client count (batching on)."""
    out = {}
    on = [r for r in runs if r["batching"] == "on"]
    for t in (r for r in on if r["model"] == "teacher"):
        same = next(r for r in on if r["model"] == "student" and r["clients"] == t["clients"])
        within = [r for r in runs if r["model"] == "student" and r["p95_ms"] is not None and r["p95_ms"] <= t["p95_ms"]]
        best = max(within, key=lambda r: r["images_per_s"], default=None)
        out[f"clients_{t['clients']}"] = {
            "teacher_images_per_s": t["images_per_s"], "teacher_p95_ms": t["p95_ms"],
            "student_images_per_s": same["images_per_s"], "student_p95_ms": same["p95_ms"],
            "ratio_same_clients": same["images_per_s"] / t["images_per_s"],
            "ratio_equal_p95": best["images_per_s"] / t["images_per_s"] if best else None,
            "student_at_equal_p95": None if best is None else {k: best[k] for k in ("clients", "batching", "p95_ms", "images_per_s")},
        }
    for c in sorted({r["clients"] for r in runs}):
        for m in ("teacher", "student"):
            a = next((r for r in runs if r["model"] == m and r["clients"] == c and r["batching"] == "on"), None)
            b = next((r for r in runs if r["model"] == m and r["clients"] == c and r["batching"] == "off"), None)
            if a and b:
                out.setdefault("batching_gain", {})[f"{m}_clients_{c}"] = a["images_per_s"] / b["images_per_s"]
    return out


def render(res: dict, json_path: str) -> str:
    m = res["machine"]
    lines = [SECTION, "",
             f"`{res['command']}` — {res['date']}, {m['processor']}, {m['cpus']} CPUs, torch {m['torch']}, "
             f"{res['threads']} torch threads in the server{' (torch.compile)' if res.get('compile') else ''}, load average {m['loadavg_before'][0]:.1f} before / "
             f"{m['loadavg_after'][0]:.1f} after; DDIM-{res['steps']}, one 16×16 image per request, closed loop "
             f"({res['seconds_per_run']:g} s window after {res['warmup_s']:g} s warm-up). Teacher `{res['teacher']}`, "
             f"student `{res['student']}`. JSON: `{json_path}`.", "",
             "| batching | clients | model | images/s | p50 ms | p95 ms | p99 ms | errors | mean batch | compute busy |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["runs"]:
        lines.append(f"| {r['batching']} (max {r['max_batch']}) | {r['clients']} | {r['model']} | {r['images_per_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {r['mean_batch_images']:.1f} | {r['compute_busy']:.2f} |")
    lines += ["", "| clients (batching on) | student/teacher images/s, same clients | at equal p95 (student run used) |",
              "|---:|---:|---|"]
    for k, s in sorted(((k, s) for k, s in res["summary"].items() if k.startswith("clients_")), key=lambda kv: int(kv[0][8:])):
        eq = "no student run within the teacher's p95" if s["ratio_equal_p95"] is None else (
            f"{s['ratio_equal_p95']:.2f}x ({s['student_at_equal_p95']['clients']} clients, batching "
            f"{s['student_at_equal_p95']['batching']}, p95 {s['student_at_equal_p95']['p95_ms']:.0f} ms "
            f"≤ teacher's {s['teacher_p95_ms']:.0f} ms)")
        lines.append(f"| {k.split('_')[1]} | {s['ratio_same_clients']:.2f}x | {eq} |")
    lines += ["", f"Server peak RSS (VmHWM): {res['peak_rss_mb']:.0f} MB; ceiling stated: {res['memory_ceiling_mb']:.0f} MB.", ""]
    return "\n".join(lines) + "\n"


def write_section(md: str | Path, section: str) -> None:
    replace_section(md, SECTION, section)
