"""Hardware energy counters: NVIDIA's (pynvml) on GPU, RAPL (/sys/class/powercap) on CPU — measured, never estimated.

Where no counter can be read the meter is None and the reason is reported; nothing is made up from TDPs.
RAPL counts the whole CPU package (every process on it), so CPU joules are an upper bound for our work.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..extras import install_hint

RAPL_ROOT = Path("/sys/class/powercap")


class RaplCounter:
    """Sum of the package domains intel-rapl:N (not their sub-zones), wrap-around handled."""

    def __init__(self, domains: list[Path]):
        self.domains = domains
        self.max_uj = [int((d / "max_energy_range_uj").read_text()) if (d / "max_energy_range_uj").is_file() else 2**64
                       for d in domains]
        self.name = "RAPL " + "+".join(d.name for d in domains) + " (whole package)"

    def start(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def stop(self, token: list[int]) -> float:
        now = self.start()
        return sum(((b - a) % m) for a, b, m in zip(token, now, self.max_uj)) / 1e6


class NvmlCounter:
    """nvmlDeviceGetTotalEnergyConsumption: millijoules since driver load (Volta and newer)."""

    def __init__(self, index: int):
        import pynvml

        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = f"NVML total energy, GPU {index} ({pynvml.nvmlDeviceGetName(self.handle)})"

    def start(self) -> int:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def stop(self, token: int) -> float:
        return (self.start() - token) / 1e3


def rapl_domains(root: Path = RAPL_ROOT) -> list[Path]:
    return sorted(d for d in Path(root).glob("intel-rapl:*") if d.name.count(":") == 1)


def open_counter(device, rapl_root: Path = RAPL_ROOT):
    """(counter, None) when a counter is readable for this device, else (None, why not)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            c = NvmlCounter(device.index if device.index is not None else torch.cuda.current_device())
            c.start()
            return c, None
        except ImportError:
            return None, install_hint("pynvml", "the GPU energy counter")
        except Exception as exc:  # NVMLError_NotSupported on pre-Volta GPUs, no driver access...
            return None, f"NVML energy counter not readable: {exc}"
    domains = rapl_domains(rapl_root)
    if not domains:
        return None, f"no RAPL domains under {rapl_root} on this machine"
    try:
        c = RaplCounter(domains)
        c.start()
        return c, None
    except (OSError, ValueError) as exc:  # energy_uj is root-only on recent kernels
        return None, f"RAPL counter not readable ({exc.__class__.__name__}: {exc})"


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason, "joules_per_image": None}
