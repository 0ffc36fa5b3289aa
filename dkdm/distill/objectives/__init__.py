"""Distillation objectives, one module each: `eps` (DKDM's eps matching on records, the default), `trajectory`
(jumps between two cached states of one trajectory), `consistency` (LCM-style consistency distillation on adjacent
cached states). Each is a callable (batch, student) -> (loss, {part: value}) with `units` naming each part's unit."""

from __future__ import annotations

from ...errors import DkdmError

OBJECTIVES = ("eps", "trajectory", "consistency")
PAIR_OBJECTIVES = ("trajectory", "consistency")  # read pairs of states (dkdm.cache.paths), not records


def check(name: str) -> None:
    if name not in OBJECTIVES:
        raise DkdmError(f"unknown --objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
