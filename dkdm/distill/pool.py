"""The live-teacher pool of DKDM (Xiang et al. 2025, sec. 4.2): teacher-generated noisy samples that
advance one teacher step each time they are used.

- iterative: b samples in lock-step at the same timestep;
- shuffled:  b samples spread over the timesteps, all used and advanced every step;
- dynamic:   rho*T*b samples spread over the timesteps, b drawn at random each step.

The pool is built lazily (on the first draw) so a resumed run loads its saved state instead of
spending teacher steps; `seed_from` fills it from cache records instead of walking the teacher.
"""

from __future__ import annotations

import torch

from .. import coverage as cov
from ..errors import DkdmError
from .. import seeds
from ..sampling import initial_noise
from ..schedulers import SINGLE_STEP, deterministic_step, step_mixed

VARIANTS = ("iterative", "shuffled", "dynamic")


class TeacherPool:
    def __init__(self, teacher, sched, sampler_kind: str, variant: str, batch_size: int, rho: float = 0.4,
                 eta: float = 0.0, seed: int = 0, device="cpu", init_batch: int = 256, lazy: bool = False,
                 noise_seed_base: int | None = None, coverage: str = "grid", rank: int = 0,
                 trajectory_noise_from: int | None = None):
        """Noise (fresh members and the step noise of DDPM / DDIM eta > 0) and draws come from the pool's own
        generators, seeded by purpose (dkdm.seeds) and saved with it. `trajectory_noise_from=j` starts member i
        from cached trajectory j+i's noise instead (base seed 0): for comparing the pool with whole walks."""
        if variant not in VARIANTS:
            raise DkdmError(f"unknown pool variant {variant!r}; choose one of {VARIANTS}")
        if sampler_kind not in SINGLE_STEP:
            raise DkdmError(f"a live-teacher pool needs a single-step scheduler ({sorted(SINGLE_STEP)}), not {sampler_kind!r}")
        self.teacher, self.sched, self.variant, self.b, self.eta = teacher, sched, variant, batch_size, eta
        self.device, self.init_batch = device, init_batch
        self.timesteps = torch.as_tensor([int(t) for t in sched.timesteps], dtype=torch.long)
        self.T = len(self.timesteps)
        self.coverage, self.T_train = coverage, int(sched.config.num_train_timesteps)
        cov.check(coverage)
        size = batch_size if variant != "dynamic" else max(batch_size, int(round(rho * self.T * batch_size)))
        self.size = size
        self.next_seed = trajectory_noise_from
        base = seeds.pool(seed, rank) if noise_seed_base is None else noise_seed_base
        self.noise_gen = torch.Generator().manual_seed(base)
        self.gen = torch.Generator().manual_seed(seeds.pool_draws(seed, rank))
        if variant == "iterative":
            self.idx = torch.zeros(size, dtype=torch.long)
        else:  # uniformly spread step indices
            self.idx = (torch.arange(size) * self.T // size).long()
        # per-member shift of the grid (coverage 'offsets'): a trajectory keeps its shift until it restarts
        self.shift = self._shifts(0, size)
        self.started = size
        self.x = None
        self.teacher_forwards = 0
        if not lazy:
            self.build()

    def _shifts(self, first: int, n: int) -> torch.Tensor:
        return cov.shifts(self.coverage, self.timesteps, self.T_train, range(first, first + n))

    def t_of(self, members: torch.Tensor) -> torch.Tensor:
        """Current training timestep of the given members."""
        return self.timesteps[self.idx[members]] + self.shift[members]

    def build(self) -> None:
        self.x = self._fresh(self.size)
        self._advance_to_targets(self.init_batch)

    def seed_from(self, records) -> int:
        """Fill the pool from (x_t, t, target) cache records of the same schedule: no teacher steps spent."""
        pos = {int(t) + int(s): (i, int(s)) for i, t in enumerate(self.timesteps)
               for s in cov.offsets_used(self.coverage, self.timesteps, self.T_train)}
        xs, idx, shift = [], [], []
        for x, t, *_ in records:
            for xi, ti in zip(x, t.view(-1).tolist()):
                if ti not in pos:
                    raise DkdmError(f"cache record at t={ti} is not among the live pool's timesteps (grid {self.timesteps.tolist()}, "
                                    f"coverage {self.coverage}); seed the pool from a cache generated with the same sampler and coverage")
                xs.append(xi)
                idx.append(pos[ti][0])
                shift.append(pos[ti][1])
                if len(xs) == self.size:
                    break
            if len(xs) == self.size:
                break
        if len(xs) < self.size:
            raise DkdmError(f"the cache gave {len(xs)} records, fewer than the pool's {self.size}")
        self.x = torch.stack(xs).float().to(self.device)
        self.idx = torch.as_tensor(idx, dtype=torch.long)
        self.shift = torch.as_tensor(shift, dtype=torch.long)
        if self.variant == "iterative":  # lock-step: everyone at the step of the first record
            self.idx[:] = self.idx[0]
            self.x = self._fresh(self.size)
            self._advance_to_targets(self.init_batch)
        return self.size

    def _fresh(self, n: int) -> torch.Tensor:
        if self.next_seed is None:
            noise = torch.randn((n, *self.teacher.sample_shape), generator=self.noise_gen)
        else:  # member i starts from the noise of `sample(seeds=[trajectory seed i])`
            noise, _ = initial_noise([seeds.trajectory(0, j) for j in range(self.next_seed, self.next_seed + n)],
                                     self.teacher.sample_shape, "cpu")
            self.next_seed += n
        return (noise * self.sched.init_noise_sigma).to(self.device)

    def _step_gen(self):
        """DDPM and DDIM eta > 0 draw step noise: from the pool's stream, never the process RNG (init, dropout)."""
        return self.noise_gen if self.eta > 0 or not deterministic_step(self.sched) else None

    @torch.no_grad()
    def _advance_to_targets(self, chunk: int) -> None:
        """Walk every member from noise to its assigned step; members stop as they arrive."""
        target = self.idx.clone()
        cur = torch.zeros_like(target)
        for lo in range(0, self.size, chunk):
            sl = slice(lo, lo + chunk)
            while True:
                active = (cur[sl] < target[sl]).nonzero(as_tuple=True)[0] + lo
                if len(active) == 0:
                    break
                t = (self.timesteps[cur[active]] + self.shift[active]).to(self.device)
                out = self.teacher(self.x[active], t)
                self.teacher_forwards += len(active)
                self.x[active] = step_mixed(self.sched, out, t, self.x[active], eta=self.eta, generators=self._step_gen(), guided_ddim=True)
                cur[active] += 1

    @torch.no_grad()
    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch (x_t, t, teacher output); the drawn members then advance one step."""
        if self.x is None:
            self.build()
        if self.variant == "dynamic":
            sel = torch.randperm(self.size, generator=self.gen)[: self.b]
        else:
            sel = torch.arange(self.size)
        sel_d = sel.to(self.device)
        x = self.x[sel_d]
        t = self.t_of(sel).to(self.device)
        out = self.teacher(x, t)  # the last teacher call of a draw: feature taps see exactly this batch
        self.teacher_forwards += len(sel)
        self.x[sel_d] = step_mixed(self.sched, out, t, x, eta=self.eta, generators=self._step_gen(), guided_ddim=True)
        self.idx[sel] += 1
        done = sel[self.idx[sel] >= self.T]
        if len(done):  # finished trajectories restart from fresh noise
            self.x[done.to(self.device)] = self._fresh(len(done))
            self.idx[done] = 0
            self.shift[done] = self._shifts(self.started, len(done))
            self.started += len(done)
        return x, t, out

    def state_dict(self) -> dict:
        if self.x is None:
            self.build()
        # copies: the pool keeps changing its tensors in place after a snapshot
        return {"x": self.x.detach().cpu().clone(), "idx": self.idx.clone(), "shift": self.shift.clone(), "started": torch.tensor(self.started),
                "gen": self.gen.get_state(),
                "next_seed": torch.tensor(-1 if self.next_seed is None else self.next_seed, dtype=torch.long),
                "noise_gen": self.noise_gen.get_state(),
                "teacher_forwards": torch.tensor(self.teacher_forwards, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["x"].shape[:1]) != (self.size,):
            raise DkdmError(f"checkpointed pool holds {state['x'].shape[0]} samples, this run's pool {self.size}")
        if tuple(state["x"].shape[1:]) != tuple(self.teacher.sample_shape) or not torch.isfinite(state["x"]).all():
            raise DkdmError(f"checkpointed pool samples are not finite {tuple(self.teacher.sample_shape)} images")
        idx, shift = state["idx"], state.get("shift", torch.zeros(self.size, dtype=torch.long))
        for k, v in (("idx", idx), ("shift", shift)):
            if v.dtype != torch.long or tuple(v.shape) != (self.size,):
                raise DkdmError(f"checkpointed pool {k} is not {self.size} integers")
        if bool((idx < 0).any() or (idx >= self.T).any()):
            raise DkdmError(f"checkpointed pool step indices are not in [0, {self.T})")
        t = self.timesteps[idx] + shift
        if bool((t < 0).any() or (t >= self.T_train).any()):
            raise DkdmError(f"checkpointed pool shifts move timesteps out of [0, {self.T_train})")
        self.x = state["x"].to(self.device)
        self.idx = state["idx"].clone()
        if "shift" in state:
            self.shift, self.started = state["shift"].clone(), int(state["started"])
        self.gen.set_state(state["gen"])
        self.next_seed = None if int(state["next_seed"]) < 0 else int(state["next_seed"])
        self.noise_gen.set_state(state["noise_gen"])
        self.teacher_forwards = int(state["teacher_forwards"])
