"""Every seed dkdm derives, named by purpose, in disjoint parts of the one space torch's noise uses.

torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so "disjoint" has to hold modulo
2**32. The space is split by its top bits (docs/cache-format.md, "Seeds"):

- trajectory  [0, 2**31)          per-sample noise of cached teacher walks (base seed 0: seed == trajectory id)
- evaluation  [2**31, 3 * 2**30)  per-sample noise of `dkdm evaluate` (index i -> 2**31 + i)
- stream      [3 * 2**30, 2**32)  one generator per job and part: live pool, real-image noise, loader
                                  workers, shard order, a rank's global RNG (init, dropout)

A stream's first draw is what a per-sample seed of the same value would draw, so streams get their own
range too: no trajectory, evaluation image or stream can start from another's noise.
"""

from __future__ import annotations

import hashlib

SPACE = 2**32
TRAJECTORY_SPACE = (0, 2**31)
EVALUATION_SPACE = (2**31, 3 * 2**30)
STREAM_SPACE = (3 * 2**30, 2**32)

# base seeds spread by a golden-ratio multiplier; base 0 keeps seed == trajectory id
SEED_MULTIPLIER = 0x9E3779B1
TRAJECTORY_RULE = "(traj + base_seed * 0x9E3779B1) mod 2**31"
EVALUATION_RULE = "2**31 + (index mod 2**30)"
# caches made before dkdm 0.4 record this rule; it is kept to read their seed ranges
OLD_TRAJECTORY_RULE = "(traj + base_seed * 0x9E3779B1) mod 2**32"


def trajectory(base_seed: int, traj: int) -> int:
    """The noise seed of cached trajectory `traj` of a cache generated with `base_seed`."""
    return (int(traj) + int(base_seed) * SEED_MULTIPLIER) % TRAJECTORY_SPACE[1]


def evaluation(index: int) -> int:
    """The noise seed of evaluation sample `index` (evaluate's --seed + i): never a trajectory's."""
    return EVALUATION_SPACE[0] + int(index) % (EVALUATION_SPACE[1] - EVALUATION_SPACE[0])


def evaluation_seeds(first: int, n: int) -> list[int]:
    return [evaluation(first + i) for i in range(n)]


def stream(purpose: str, *parts: int) -> int:
    """A generator seed for one purpose (pool, real, worker, shards, rank) and its parts (run seed, rank, ...)."""
    key = "/".join(["dkdm", purpose, *(str(int(p)) for p in parts)])
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return STREAM_SPACE[0] + h % (STREAM_SPACE[1] - STREAM_SPACE[0])


def rank(seed: int, rank_: int) -> int:
    """The process-global torch RNG of a rank (weight init, dropout, anything diffusers draws without a generator)."""
    return stream("rank", seed, rank_)


def pool(seed: int, rank_: int) -> int:
    """The live pool's noise: fresh trajectories and the step noise of DDPM / DDIM eta > 0."""
    return stream("pool-noise", seed, rank_)


def pool_draws(seed: int, rank_: int) -> int:
    """Which pool members a dynamic pool draws each step."""
    return stream("pool-draws", seed, rank_)


def pool_init(seed: int) -> int:
    """The loader seed of the cache records a live pool starts from (--pool-init cache)."""
    return stream("pool-init", seed)


def real(seed: int, rank_: int) -> int:
    """Noise and timesteps for real images mixed into a batch."""
    return stream("real", seed, rank_)


def worker(seed: int, rank_: int, worker_: int) -> int:
    """A cache-loader worker's shuffle buffer."""
    return stream("worker", seed, rank_, worker_)


def shard_order(seed: int, epoch: int) -> int:
    """The order shards are read in, one epoch of the cache (the same on every rank and worker)."""
    return stream("shards", seed, epoch)


def spans_mod(lo: int, n: int, modulus: int) -> list[tuple[int, int]]:
    """The half-open intervals [a, b) covered by lo, lo+1, ..., lo+n-1 taken mod `modulus`."""
    if n <= 0:
        return []
    if n >= modulus:
        return [(0, modulus)]
    lo %= modulus
    hi = lo + n
    return [(lo, hi)] if hi <= modulus else [(lo, modulus), (0, hi - modulus)]


def trajectory_spans(base_seed: int, first: int, stop: int, rule: str = TRAJECTORY_RULE) -> list[tuple[int, int]]:
    """Noise seeds of trajectories [first, stop) under a cache's recorded seed rule, as intervals."""
    modulus = 2**32 if rule == OLD_TRAJECTORY_RULE else TRAJECTORY_SPACE[1]
    return spans_mod(int(first) + int(base_seed) * SEED_MULTIPLIER, int(stop) - int(first), modulus)


def overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """How many seeds two interval lists share."""
    return sum(max(0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)


def trained_on(manifest: dict) -> dict:
    """What a student's card records about its cache: id, base seed, seed rule, trajectory range [first, stop)."""
    spans = [s["trajectories"] for s in manifest.get("shards", []) if isinstance(s.get("trajectories"), list)]
    first = min((a for a, _ in spans), default=0)
    stop = max((b for _, b in spans), default=0)
    return {"cache_id": manifest.get("cache_id"), "base_seed": int(manifest["sampler"].get("base_seed", 0)),
            "seed_rule": manifest["sampler"].get("seed_rule", OLD_TRAJECTORY_RULE), "trajectories": [first, stop]}
