"""What --threads, --dtype and --compile buy on this machine, per batch size, teacher vs student (docs/serve.md).

usage: python scripts/serve-hardware.py STUDENT_FOLDER OUT.json [THREADS:DTYPE[:compile] ...]
Times `dkdm.serve.models.generate` (the server's compute call: DDIM-25, 16x16), best of 2 after a warm-up;
teacher and student take turns at each batch size.
"""

import json
import os
import sys
import time

import torch

from dkdm.runtime import atomic_write_json
from dkdm.serve.models import generate, load_served

student, out = sys.argv[1], sys.argv[2]
specs = sys.argv[3:] or ["1:fp32", "2:fp32", "1:bf16", "1:fp32:compile"]
rows = []


def best(m, bs, reps=2):
    generate(m, list(range(bs)), 25, "ddim")  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        generate(m, list(range(bs)), 25, "ddim")
        times.append(time.perf_counter() - t0)
    return min(times)


for spec in specs:
    threads, dtype, *rest = spec.split(":")
    threads, comp = int(threads), rest == ["compile"]
    torch.set_num_threads(threads)
    models = {n: load_served(f"{n}={src}", torch.device("cpu"), dtype, comp)
              for n, src in (("teacher", "builtin:digits"), ("student", student))}
    for bs in (1, 16, 64):
        s = {n: best(m, bs) for n, m in models.items()}
        row = {"threads": threads, "dtype": dtype, "compile": comp, "batch": bs,
               "teacher_ms": 1000 * s["teacher"], "student_ms": 1000 * s["student"],
               "teacher_images_per_s": bs / s["teacher"], "student_images_per_s": bs / s["student"],
               "ratio": s["teacher"] / s["student"], "loadavg": os.getloadavg()[0]}
        rows.append(row)
        print(json.dumps(row), flush=True)
atomic_write_json(out, {"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "torch": torch.__version__, "cpus": os.cpu_count(), "command": " ".join(sys.argv)})
