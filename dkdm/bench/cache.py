"""`dkdm bench cache`: what writing and reading the cache costs, next to the teacher and the distiller."""

from __future__ import annotations

import platform
from statistics import median
import tempfile
import time

import torch

from ..cache.inspect import info
from ..cache.reader import CacheReader
from ..errors import DkdmError
from ..config import GenerateConfig, SamplerConfig, UNetSpec
from ..generate import generate
from ..sampling import trajectory_seed
from ..runtime import pick_device, positive
from ..sampling import sample
from ..schedulers import make_scheduler
from ..students import build_unet, student_spec_for
from ..teacher import load_teacher

FORMATS = ("wds", "wds-gz", "zarr")


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def bare_sampling(teacher, sampler: SamplerConfig, trajectories: int, batch_size: int, shard_size: int, seed: int,
                  device) -> float:
    """Seconds for the teacher alone to walk the same trajectories in the same batches as generate (which never
    lets a batch straddle two shards), with the same steps and seeds, nothing kept."""
    sched = make_scheduler(sampler, teacher.scheduler_config)
    t0 = time.perf_counter()
    for a in range(0, trajectories, shard_size):
        b = min(a + shard_size, trajectories)
        for lo in range(a, b, batch_size):
            seeds = [trajectory_seed(seed, j) for j in range(lo, min(lo + batch_size, b))]
            sample(teacher, sched, seeds, teacher.sample_shape, eta=sampler.eta, device=device)
    _sync(device)
    return time.perf_counter() - t0


def read_rate(url: str, batch_size: int, shuffle_buffer: int) -> float:
    """Records/s streaming one epoch through the trainer's loader (verify, decode, shuffle buffer, batch)."""
    r = CacheReader(url)
    epochs = max(1, -(-2 * batch_size // r.num_records))  # the loader drops a last partial batch: read enough for two
    loader = r.loader(batch_size, num_workers=0, shuffle_buffer=shuffle_buffer, seed=0, epochs=epochs)
    t0, n = time.perf_counter(), 0
    for x, *_ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def distill_rate(teacher, student: UNetSpec, batch_size: int, steps: int, device) -> float:
    """Records/s the distiller consumes: student forward + backward + AdamW step at this batch (the loss of DKDM)."""
    net = build_unet(student_spec_for(dict(teacher.unet.config), student)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    c, h, w = teacher.sample_shape
    x, target = torch.randn(batch_size, c, h, w, device=device), torch.randn(batch_size, c, h, w, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    for i in range(steps + 1):
        if i == 1:  # the first step warms up allocators and kernels
            _sync(device)
            t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(net(x, t).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_cache(teacher: str = "builtin:digits", trajectories: int = 256, batch_size: int = 128, steps: int = 25,
                shard_size: int = 128, dtype: str = "float16", read_batch: int = 64, shuffle_buffer: int = 4096,
                student: UNetSpec | None = None, distill_steps: int = 20, repeats: int = 2, device: str = "auto",
                workdir: str | None = None, log=print) -> dict:
    """Generate/bare-sampling throughput ratio, read records/s per backend vs the distiller, bytes per record."""
    for name, v in (("trajectories", trajectories), ("batch_size", batch_size), ("steps", steps), ("repeats", repeats)):
        positive(name, v)
    if shard_size % batch_size and batch_size % shard_size:
        # generate never lets a batch straddle two shards: a mismatch would compare different batch sizes
        raise DkdmError(f"--shard-size {shard_size} and --batch-size {batch_size} must divide one another")
    dev = pick_device(device)
    t = load_teacher(teacher, dev)
    sampler = SamplerConfig(scheduler="ddim", steps=steps)
    n_records = trajectories * steps
    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "settings": {"teacher": teacher, "trajectories": trajectories, "batch_size": batch_size, "steps": steps,
                        "shard_size": shard_size, "dtype": dtype, "device": str(dev), "repeats": repeats,
                        "read_batch": read_batch, "shuffle_buffer": shuffle_buffer},
           "formats": {}}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        bare, gen, share = [], {f: [] for f in FORMATS}, {f: [] for f in FORMATS}
        paired = {f: [] for f in FORMATS}
        # each generate run is paired with a bare run right before it, so a load swing on a shared machine
        # moves both halves of a ratio; the median of the paired ratios is the result
        for rep in range(repeats):
            for f in FORMATS:
                b = bare_sampling(t, sampler, trajectories, batch_size, shard_size, 0, dev)
                cfg = GenerateConfig(teacher=teacher, out=f"{tmp}/{f}-{rep}", trajectories=trajectories, sampler=sampler,
                                     shard_size=shard_size, batch_size=batch_size, device=str(dev), dtype=dtype, format=f)
                g = generate(cfg, progress=False)
                bare.append(b)
                gen[f].append(g["seconds"])
                share[f].append(g["write_seconds"] / g["seconds"])
                paired[f].append(b / g["seconds"])
                log(f"repeat {rep + 1}/{repeats}: bare {n_records / b:.0f} records/s, generate --format {f} "
                    f"{n_records / g['seconds']:.0f} records/s (ratio {paired[f][-1]:.3f})")
        res["bare_records_per_s"] = n_records / min(bare)
        res["distill_records_per_s"] = distill_rate(t, student or UNetSpec(block_out_channels=(16, 32, 32)), read_batch,
                                                    distill_steps, dev)
        log(f"distiller consumes {res['distill_records_per_s']:.0f} records/s")
        for f in FORMATS:
            url = f"{tmp}/{f}-0"
            i = info(url)
            rate = read_rate(url, read_batch, shuffle_buffer)
            log(f"read --format {f}: {rate:.0f} records/s")
            res["formats"][f] = {
                "generate_records_per_s": n_records / min(gen[f]),
                "generate_over_bare": median(paired[f]),
                "generate_over_bare_per_repeat": paired[f],
                # robust to load swings on shared machines: the share of generate's time spent writing
                "write_share": min(share[f]),
                "one_minus_write_share": 1 - min(share[f]),
                "read_records_per_s": rate,
                "read_over_distill": rate / res["distill_records_per_s"],
                "bytes_per_record": i["bytes_per_record"],
                "raw_fp32_bytes_per_record": i["raw_fp32_bytes_per_record"],
                "bytes_over_raw_fp32": i["bytes_per_record"] / i["raw_fp32_bytes_per_record"],
            }
    return res


def markdown(res: dict) -> str:
    """The table docs/benchmarks.md records."""
    s = res["settings"]
    lines = [f"Machine: {res['machine']['platform']}, {res['machine']['processor']}, torch {res['machine']['torch']} "
             f"({res['machine']['torch_threads']} threads), device {s['device']}; {res['date']}.",
             f"Teacher {s['teacher']}, {s['trajectories']} trajectories x {s['steps']} DDIM steps, batch {s['batch_size']}, "
             f"shards of {s['shard_size']} trajectories, {s['dtype']}; {s['repeats']} repeats, each generate run paired with a bare run just before it.",
             f"Bare teacher sampling: {res['bare_records_per_s']:.0f} records/s; the distiller (student fwd+bwd+AdamW, "
             f"batch {s['read_batch']}) consumes {res['distill_records_per_s']:.0f} records/s.", "",
             "| format | generate records/s | generate / bare, median of paired runs (target >= 0.95; per repeat) | 1 - writer's share of generate | "
             "read records/s | read / distiller | bytes/record | / raw fp32 (target <= 0.5) |", "|---|---|---|---|---|---|---|---|"]
    for f, r in res["formats"].items():
        per = ", ".join(f"{v:.2f}" for v in r["generate_over_bare_per_repeat"])
        lines.append(f"| {f} | {r['generate_records_per_s']:.0f} | {r['generate_over_bare']:.3f} ({per}) | "
                     f"{r['one_minus_write_share']:.3f} | "
                     f"{r['read_records_per_s']:.0f} | {r['read_over_distill']:.1f}x | {r['bytes_per_record']:.0f} | "
                     f"{r['bytes_over_raw_fp32']:.3f} |")
    return "\n".join(lines) + "\n"


