"""Energy per measured window through zeus-ml (NVML on NVIDIA GPUs, RAPL on CPUs), on the windows the timing uses.

Order for energy = "auto": zeus-ml's ZeusMonitor, else dkdm's own hardware counter reader
(dkdm.evaluate.energy), else none. With none, cost is seconds per image and every report says so: seconds
are never presented as joules, and nothing is estimated from a TDP.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time

import torch

from ..errors import DkdmError
from ..evaluate import energy as counters

CHOICES = ("auto", "zeus", "counter", "none")


class ZeusMeter:
    """One ZeusMonitor window per measurement; joules = GPU + CPU package energy over the window."""

    def __init__(self, device: torch.device):
        gpus = [device.index or 0] if device.type == "cuda" else []
        logging.getLogger("zeus").setLevel(logging.ERROR)  # zeus logs every probe it makes at WARNING
        # its vendor probes (amdsmi) print to stdout/stderr; a failure still reaches us as an exception
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from zeus.monitor import ZeusMonitor

            self.monitor = ZeusMonitor(gpu_indices=gpus)  # CPU packages: all RAPL shows (SustainDiffusion: CPU + GPU)
        if not self.monitor.gpu_indices and not self.monitor.cpu_indices:
            raise RuntimeError("zeus-ml found no GPU (NVML) and no CPU (RAPL) energy counter")
        self.name = f"zeus-ml ZeusMonitor (GPUs {self.monitor.gpu_indices}, CPU packages {self.monitor.cpu_indices})"
        self._n = 0

    def start(self) -> str:
        self._n += 1
        key = f"dkdm-tune-{self._n}"
        self.monitor.begin_window(key)
        return key

    def stop(self, key: str) -> float:
        m = self.monitor.end_window(key)
        return float(m.total_energy)


class CounterMeter:
    """dkdm's own NVML / RAPL reader."""

    def __init__(self, counter):
        self.counter, self.name = counter, counter.name

    def start(self):
        return self.counter.start()

    def stop(self, token) -> float:
        return float(self.counter.stop(token))


def open_meter(kind: str, device) -> tuple[object | None, list[str]]:
    """(meter or None, why each option tried was not usable)."""
    if kind not in CHOICES:
        raise DkdmError(f"energy must be one of {list(CHOICES)}, got {kind!r}")
    device = torch.device(device)
    why: list[str] = []
    if kind == "auto" and device.type != "cuda" and not counters.rapl_domains():
        why.append(f"no GPU and no RAPL domains under {counters.RAPL_ROOT}: zeus-ml and dkdm's reader have no counter to read")
        return None, why
    if kind in ("auto", "zeus"):
        try:
            return ZeusMeter(device), why
        except ImportError:
            why.append("zeus-ml not installed (pip install zeus-ml)")
        except Exception as exc:  # no NVML/RAPL, no permission, a broken vendor library...
            why.append(f"zeus-ml unavailable: {type(exc).__name__}: {' '.join(str(exc).split())}")
        if kind == "zeus":
            raise DkdmError("energy = zeus asked for, but " + why[-1])
    if kind in ("auto", "counter"):
        c, reason = counters.open_counter(device)
        if c is not None:
            return CounterMeter(c), why
        why.append(reason)
        if kind == "counter":
            raise DkdmError(f"energy = counter asked for, but {reason}")
    if kind == "none":
        why.append("energy measurement switched off (energy = none)")
    return None, why


class Window:
    """Seconds and (when a meter exists) joules of one block of work, on the same window."""

    def __init__(self, meter, device):
        self.meter, self.cuda = meter, torch.device(device).type == "cuda"
        self.device = device

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.token = self.meter.start() if self.meter else None
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.joules = self.meter.stop(self.token) if self.meter else None
