"""Ceilings on everything a cache may declare, checked before anything is allocated. A cache is untrusted
input: without a ceiling a 1 KB manifest can ask for terabytes. Raise one with DKDM_LIMIT_<NAME>=value."""

from __future__ import annotations

import os

from ..errors import DkdmError

DEFAULTS = {
    "json_bytes": 64 << 20,  # manifest.json, a sidecar, zarr.json
    "shards": 1_000_000,  # shards in one cache
    "shard_records": 10_000_000,  # records in one shard
    "records": 10_000_000_000,  # records in one cache
    "record_dims": 3,  # C, H, W
    "record_elements": 1 << 24,  # elements of one x_t / target (64 MB at fp32)
    "shard_bytes": 4 << 30,  # one shard as stored, inflated, and decoded: the reader's memory per shard
    "steps": 10_000,  # sampler steps / timesteps
    "embedding_rows": 10_000_000,
}


def limit(name: str) -> int:
    """The ceiling `name`, from DKDM_LIMIT_<NAME> when set, else its default."""
    env = os.environ.get(f"DKDM_LIMIT_{name.upper()}")
    if env is None:
        return DEFAULTS[name]
    try:
        value = int(float(env))
    except ValueError:
        raise DkdmError(f"DKDM_LIMIT_{name.upper()}={env!r} is not a number") from None
    if value <= 0:
        raise DkdmError(f"DKDM_LIMIT_{name.upper()} must be positive, got {value}")
    return value


def check(name: str, value: int, what: str) -> int:
    """`value` if within the ceiling, else a one-line error saying how to raise it."""
    cap = limit(name)
    if value > cap:
        raise DkdmError(f"{what} is {value:,}, over the limit of {cap:,}; if this cache is trusted, raise it with "
                        f"DKDM_LIMIT_{name.upper()}")
    return value
