"""Progress bars that also report throughput, quiet when asked or when not on a terminal's rank 0."""

from __future__ import annotations

from tqdm.auto import tqdm


class _Bar:
    def __init__(self, total, desc, disable, unit):
        self._bar = tqdm(total=total, desc=desc, disable=disable, unit=unit, dynamic_ncols=True, mininterval=0.5)

    def update(self, n=1, **postfix):
        if postfix:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    @property
    def rate(self) -> float:
        d = self._bar.format_dict
        return d["n"] / d["elapsed"] if d.get("elapsed") else 0.0

    def close(self):
        self._bar.close()


def progress_bar(total, desc, disable=False, unit="it") -> _Bar:
    return _Bar(total, desc, disable, unit)
