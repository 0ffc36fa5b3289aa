"""Trajectory reading for few-step objectives: pairs of states of ONE trajectory, assembled inside a shard read
(a shard holds whole trajectories, so no pair can span two), then shuffled across trajectories with the record
reader's buffer, seed and resume position.

The endpoint x0 of a trajectory is not stored (cache format 2): it is derived from the trajectory's last record
by the teacher walk's own last DDIM step (to alpha_bar = 1, clipped-eps rule, `schedulers.step_mixed`), so it is
the teacher's sample up to the record dtype's rounding, and version-2 caches serve few-step students unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DkdmError
from . import records as rec
from .reader import CacheReader, CacheStream
from .shuffle import TensorShuffleBuffer

PAIR_FIELDS = ("x_i", "t_i", "x_j", "t_j", "end_j", "x0", "cond")


def check_walkable(manifest: dict, where: str) -> None:
    """Pairs and endpoints need a deterministic DDIM walk that kept every state up to the last one, one record per
    (trajectory, step): refuse anything else with a line that says how to make such a cache."""
    s = manifest["sampler"]
    why = None
    if s.get("scheduler") != "ddim" or float(s.get("eta", 0.0)) != 0.0:
        why = f"it walks {s.get('scheduler')} with eta {s.get('eta')}, not deterministic DDIM (eta 0)"
    elif s.get("kept_steps") != list(range(int(s["steps"]))):
        why = f"it keeps steps {s.get('keep')!r}, not all of them (--keep all)"
    elif s.get("coverage", "grid") != "grid":  # offsets shift each trajectory's grid: few would visit 999, 499, ...
        why = f"its trajectories walk shifted grids (coverage {s.get('coverage')!r}), not the one grid (--coverage grid)"
    if why:
        raise DkdmError(f"cache {where} cannot serve trajectory pairs: {why}; generate one with "
                        "`dkdm generate --scheduler ddim --steps 40 --coverage grid --keep all`")


@dataclass
class Paths:
    """Every state of the trajectories in one shard, sorted by (traj, step); trajectory k owns rows
    start[k]:start[k+1]; x0[k] is its endpoint (t = 0, alpha_bar = 1)."""

    x: torch.Tensor  # (N, C, H, W) float32
    eps: torch.Tensor  # (N, C', H, W) teacher output at x
    t: torch.Tensor  # (N,) int64
    traj: torch.Tensor
    step: torch.Tensor
    cond: torch.Tensor
    start: torch.Tensor  # (n_traj + 1,)
    x0: torch.Tensor  # (n_traj, C, H, W)

    @property
    def num_trajectories(self) -> int:
        return len(self.start) - 1


def paired_rows(manifest: dict, store) -> int | None:
    """The "" row of a paired cache (latent teacher walked with guidance: per step a prompt record and a "" record
    at the same x_t, both unguided outputs; docs/t2i.md), else None."""
    if "unguided" not in str(manifest["record"].get("target_kind", "")):
        return None
    from .embeddings import read_embeddings

    prompts = read_embeddings(store, manifest["embeddings"])["prompts"]
    if "" not in prompts:
        raise DkdmError(f"cache {store.url}: paired records but no \"\" prompt row in embeddings.zarr")
    return prompts.index("")


def guided(blocks: list[rec.RecordBatch], uncond_row: int, scale: float, dtype: str, where: str) -> rec.RecordBatch:
    """One record per (traj, step) of a paired cache: the prompt row, its target the GUIDED eps the walk stepped
    with, e_u + g·(e_c - e_u) (Ho & Salimans 2022 eq. 6), so the few-step student learns the guided teacher."""
    b = rec.concat(blocks)
    u = b.cond == uncond_row
    c_idx, u_idx = np.flatnonzero(~u), np.flatnonzero(u)
    c_idx = c_idx[np.lexsort((b.step[c_idx], b.traj[c_idx]))]
    u_idx = u_idx[np.lexsort((b.step[u_idx], b.traj[u_idx]))]
    if len(c_idx) != len(u_idx) or np.any(b.traj[c_idx] != b.traj[u_idx]) or np.any(b.step[c_idx] != b.step[u_idx]):
        raise DkdmError(f"{where}: paired records do not match up (one prompt and one \"\" record per trajectory step)")
    e_c, e_u = rec.from_storage(b.target[c_idx], dtype), rec.from_storage(b.target[u_idx], dtype)
    eps = (e_u + scale * (e_c - e_u)).numpy()
    return rec.RecordBatch(x_t=rec.to_storage(rec.from_storage(b.x_t[c_idx], dtype), "float32"), target=eps,
                           t=b.t[c_idx], traj=b.traj[c_idx], step=b.step[c_idx], cond=b.cond[c_idx])


def assemble(blocks: list[rec.RecordBatch], dtype: str, sched, last_step: int, where: str = "shard",
             uncond_row: int | None = None, guidance_scale: float = 1.0) -> Paths:
    """Group a shard's record blocks into whole trajectories and derive each endpoint x0."""
    if not blocks:
        raise DkdmError(f"{where}: no records to assemble trajectories from")
    if uncond_row is not None:
        blocks, dtype = [guided(blocks, uncond_row, guidance_scale, dtype, where)], "float32"
    b = rec.concat(blocks)
    order = np.lexsort((b.step, b.traj))
    traj, step, t = b.traj[order], b.step[order], b.t[order]
    same = traj[1:] == traj[:-1]
    if np.any(same & (step[1:] == step[:-1])):
        raise DkdmError(f"{where}: a (trajectory, step) appears twice; one state per step is needed for pairs")
    if np.any(same & (t[1:] >= t[:-1])):
        raise DkdmError(f"{where}: timesteps do not fall along a trajectory's steps; the cache is not one walk per trajectory")
    bounds = np.flatnonzero(np.r_[True, ~same, True])
    first, last = bounds[:-1], bounds[1:] - 1
    if np.any(step[first] != 0) or np.any(step[last] != last_step) or np.any(last - first != last_step):
        raise DkdmError(f"{where}: a trajectory lacks some of steps 0..{last_step}; pairs need whole trajectories")
    x = rec.from_storage(b.x_t[order], dtype)
    eps = rec.from_storage(b.target[order], dtype)
    c = x.shape[1]
    li = torch.as_tensor(last)
    from ..schedulers import step_mixed  # the walk's own step rule (clipped eps when the scheduler clips)

    x0 = step_mixed(sched, eps[li, :c], torch.as_tensor(t[last]), x[li], guided_ddim=True)
    return Paths(x=x, eps=eps, t=torch.as_tensor(t), traj=torch.as_tensor(traj), step=torch.as_tensor(step),
                 cond=torch.as_tensor(b.cond[order]), start=torch.as_tensor(bounds), x0=x0)


def pair_index(p: Paths, jump: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row of x_i, row of x_j or -1 for the endpoint, trajectory k) for every pair j = i + jump along a
    trajectory, the endpoint counting as the state after the last; starts i = 0, stride, 2·stride, ..."""
    rows_i, rows_j, ks = [], [], []
    for k in range(p.num_trajectories):
        a, b = int(p.start[k]), int(p.start[k + 1])
        n = b - a  # states 0..n-1, endpoint = n
        i = torch.arange(0, n + 1 - jump, stride)
        j = i + jump
        rows_i.append(a + i)
        rows_j.append(torch.where(j == n, torch.full_like(j, -1), a + j))
        ks.append(torch.full_like(i, k))
    return torch.cat(rows_i), torch.cat(rows_j), torch.cat(ks)


def pairs(p: Paths, jump: int, stride: int = 1) -> tuple[torch.Tensor, ...]:
    """The pair block (x_i, t_i, x_j, t_j, end_j, x0, cond): an endpoint target has x_j = x0, t_j = 0, end_j = 1."""
    ri, rj, k = pair_index(p, jump, stride)
    end = rj < 0
    rjc = rj.clamp(min=0)
    x_j = torch.where(end.view(-1, 1, 1, 1), p.x0[k], p.x[rjc])
    t_j = torch.where(end, torch.zeros_like(rj), p.t[rjc])
    return p.x[ri], p.t[ri], x_j, t_j, end.long(), p.x0[k], p.cond[ri]


class PairStream(CacheStream):
    """CacheStream whose unit is a pair of states of one trajectory instead of a record: same shard order,
    per-rank/worker split, prefetch, bad-shard handling and seeded buffer; deterministic, so a resumed run
    fast-forwards by the number of batches consumed exactly as the record stream does."""

    def __init__(self, reader: CacheReader, batch_size: int, sched, jump: int, stride: int = 1, **kw):
        super().__init__(reader, batch_size, **kw)
        if jump < 1 or stride < 1:
            raise DkdmError(f"a pair jump and stride must be >= 1 state, got {jump} and {stride}")
        check_walkable(reader.manifest, reader.store.url)
        steps = int(reader.manifest["sampler"]["steps"])
        if jump > steps:
            raise DkdmError(f"a jump of {jump} states is longer than the cache's {steps}-step walk")
        self.sched, self.jump, self.stride, self.last_step = sched, jump, stride, steps - 1
        self.uncond_row = paired_rows(reader.manifest, reader.store)
        self.guidance = float(reader.manifest["sampler"].get("guidance_scale", 1.0))

    def _decode(self, shard: dict, fetched):
        blocks = list(self.reader.blocks(shard, self.on_bad, fetched))
        if not blocks:  # skipped as bad (on_bad='skip'), as in CacheStream._decode
            self._bad.add(shard["file"])
            return
        p = assemble(blocks, self.reader.dtype, self.sched, self.last_step, f"{self.reader.store.url}/{shard['file']}",
                     self.uncond_row, self.guidance)
        yield pairs(p, self.jump, self.stride)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # the record stream's seed rule: a pair stream and a record stream of one run mix alike
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.rank * 104729 + worker)
        buf = TensorShuffleBuffer(self.buffer, self.batch_size, gen)
        yield from buf.batches(self._blocks(worker, workers))


def pair_loader(reader: CacheReader, batch_size: int, sched, jump: int, num_workers: int = 0, stride: int = 1, **kw):
    from torch.utils.data import DataLoader

    return DataLoader(PairStream(reader, batch_size, sched, jump, stride, **kw), batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0)
