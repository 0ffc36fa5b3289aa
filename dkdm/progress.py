"""A tqdm bar whose update() also sets the postfix (loss, records/s) for the training and generation loops;
elsewhere dkdm uses tqdm directly."""

from __future__ import annotations

from tqdm.auto import tqdm


class Bar(tqdm):
    def update(self, n=1, **postfix):
        if postfix:
            self.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
        return super().update(n)


def progress_bar(total, desc, disable=False, unit="it") -> Bar:
    return Bar(total=total, desc=desc, disable=disable, unit=unit, dynamic_ncols=True, mininterval=0.5)
