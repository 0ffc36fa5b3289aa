"""Refuse to score a student on noise it was trained on: its card names the cache trajectories it saw."""

from __future__ import annotations

import json
from pathlib import Path

from .. import seeds
from ..errors import DkdmError
from ..students.call import find_model_dir

SEED_SPACES = ("evaluation", "trajectory")
CARD = "dkdm_student.json"
CARD_MAX_BYTES = 4 << 20


def noise_seeds(space: str, first: int, n: int) -> list[int]:
    """The noise seeds evaluation samples first..first+n-1 use: the evaluation space, or (on purpose, as
    before dkdm 0.4) the raw seeds first..first+n-1, which are trajectory seeds of base-seed-0 caches."""
    if space not in SEED_SPACES:
        raise DkdmError(f"unknown seed_space {space!r}; choose one of {SEED_SPACES}")
    return seeds.evaluation_seeds(first, n) if space == "evaluation" else [(first + i) % seeds.SPACE for i in range(n)]


def seed_rule(space: str) -> str:
    return f"sample i: noise seed {seeds.EVALUATION_RULE} with index = seed + i" if space == "evaluation" else \
        "sample i: noise seed seed + i (raw: base-seed-0 caches walk the same seeds)"


def noise_spans(space: str, first: int, n: int) -> list[tuple[int, int]]:
    if space == "evaluation":
        lo, hi = seeds.EVALUATION_SPACE
        return [(a + lo, b + lo) for a, b in seeds.spans_mod(first, n, hi - lo)]
    return seeds.spans_mod(first, n, seeds.SPACE)


def card_of(student: str) -> tuple[Path | None, dict]:
    """The student's card (dkdm_student.json next to unet/), or (None, {}) for a bare model folder."""
    folder = find_model_dir(student)
    if folder is None:
        return None, {}
    for cand in (folder.parent / CARD, folder / CARD):
        if cand.is_file():
            if cand.stat().st_size > CARD_MAX_BYTES:
                raise DkdmError(f"{cand}: {cand.stat().st_size} bytes, more than a student card can be ({CARD_MAX_BYTES})")
            try:
                card = json.loads(cand.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DkdmError(f"{cand} is not a JSON student card ({type(exc).__name__})") from None
            if not isinstance(card, dict):
                raise DkdmError(f"{cand} is not a JSON object")
            return cand, card
    return None, {}


def trained_spans(card: dict, where: str) -> list[tuple[int, int]]:
    """Noise-seed intervals of the cache trajectories a card says the student saw ([] when it names none), with
    those of the student it was warm-started from (card["student"]["init"]["trained_on"])."""
    init = card.get("student", {}).get("init") if isinstance(card.get("student"), dict) else None
    before = _spans(init.get("trained_on"), where) if isinstance(init, dict) else []
    return _spans(card.get("trained_on"), where) + before


def _spans(data, where: str) -> list[tuple[int, int]]:
    if data is None:
        return []
    ok = isinstance(data, dict) and isinstance(data.get("base_seed"), int) and isinstance(data.get("seed_rule"), str) \
        and isinstance(data.get("trajectories"), list) and len(data["trajectories"]) == 2 \
        and all(isinstance(v, int) and 0 <= v <= seeds.SPACE for v in data["trajectories"])
    if not ok:
        raise DkdmError(f"{where}: 'trained_on' must hold base_seed, seed_rule and trajectories [first, stop]")
    first, stop = data["trajectories"]
    return seeds.trajectory_spans(data["base_seed"], first, max(first, stop), data["seed_rule"])


def check_seed_overlap(students: list[str], space: str, first: int, n: int, allow: bool) -> dict:
    """Per student, how many evaluation samples start from a training trajectory's noise; refuse any unless `allow`."""
    evals = noise_spans(space, first, n)
    found = {}
    for s in students:
        where, card = card_of(s)
        shared = seeds.overlap(evals, trained_spans(card, str(where))) if where else 0
        found[s] = shared
        if shared and not allow:
            a, b = card["trained_on"]["trajectories"]
            raise DkdmError(f"{where}: {shared} of {n} evaluation seeds ({space} space from {first}) are the noise of "
                            f"trajectories {a}..{b - 1} it was trained on; use --seed-space evaluation or --allow-seed-overlap")
    return found
