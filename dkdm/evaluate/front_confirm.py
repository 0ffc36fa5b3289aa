"""The equal-FID reading, confirmed on the main table's seeds.

The sweep finds the teacher's quality-vs-time front cheaply (n = sweep_samples), but FID on few samples is biased
by an amount that depends on the model's own diversity (Chong & Forsyth 2020), so the order of a student and a
teacher setting can flip between small and large n: on digits a consistency student read FID 25.4 against the
teacher's DDIM-25 32.5 at 256 samples, and 9.07 against 7.83 at 2,048. So the few teacher settings along the front
around each student's crossing are scored again on the main seeds, and the crossing is read there."""

from __future__ import annotations


def confirm_equal_fid(front: list[dict], rows: list[dict], rescore) -> list[dict]:
    """Sets each row's `equal_fid_n` (the teacher's cheapest front setting whose FID on the main seeds reaches the
    row's main-seed FID) or, when none does, `equal_fid_n_lower_bound` (the best front setting's time); returns the
    front points scored again, cheapest first.

    front: the teacher's Pareto front from the sweep, cheapest first (FID falls along it); rescore(point) -> that
    setting's FID on the main seeds (the caller caches it). The walk starts at the sweep's own crossing and moves
    to cheaper settings while they still reach the FID, or to dearer ones until one does: typically 1-3 settings."""
    if not front:
        return []
    fid_n: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in fid_n:
            fid_n[i] = float(rescore(front[i]))
        return fid_n[i]

    for r in rows:
        target, start = r["fid"], _start(front, r.get("equal_fid"))
        i = start
        if at(i) <= target:
            while i > 0 and at(i - 1) <= target:
                i -= 1
        else:
            while i + 1 < len(front) and at(i) > target:
                i += 1
            if at(i) > target:
                i = None
        r.pop("equal_fid_n", None), r.pop("equal_fid_n_lower_bound", None)
        if i is not None:
            r["equal_fid_n"] = _point(front[i], at(i), r)
        else:  # beyond every front setting on the main seeds: the best one's time bounds the speed-up below
            best = min(fid_n, key=fid_n.get)
            r["equal_fid_n_lower_bound"] = _point(front[best], fid_n[best], r)
    return [{"scheduler": front[i]["scheduler"], "steps": front[i]["steps"], "fid_sweep": front[i]["fid"],
             "fid": fid_n[i], "seconds_per_image": front[i]["seconds_per_image"]} for i in sorted(fid_n)]


def _start(front: list[dict], eq: dict | None) -> int:
    """The front index of the sweep's own equal-FID setting, or the front's best (last) when it found none."""
    for i, p in enumerate(front):
        if eq and (p["scheduler"], p["steps"]) == (eq["scheduler"], eq["steps"]):
            return i
    return len(front) - 1


def _point(p: dict, fid: float, row: dict) -> dict:
    return {"scheduler": p["scheduler"], "steps": p["steps"], "fid": fid, "fid_sweep": p["fid"],
            "seconds_per_image": p["seconds_per_image"], "speedup": p["seconds_per_image"] / row["seconds_per_image"]}
