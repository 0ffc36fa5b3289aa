"""The KL term against values derived by hand from the formulas, per element in float64 Python math:
Ho et al. 2020 eq. 7 (posterior mean), Nichol & Dhariwal 2021 eq. 15 (learned-range variance), the clipped
posterior log-variance at t = 0 (guided-diffusion / DKDM), and the unit (bits) and weight (1 per term)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from dkdm.config import DistillConfig
from dkdm.distill.losses import _posterior, kl_learned_variance, vlb_term

SCHEDULES = ["linear", "squaredcos_cap_v2"]


def ref_terms(betas: list[float], t: int, x: float, eps: float, v: float) -> tuple[float, float]:
    """(mean, log-variance) of p(x_{t-1}|x_t) for one scalar, straight from the papers."""
    ac = 1.0
    acs = []
    for b in betas:
        ac *= 1.0 - b
        acs.append(ac)
    a_t = acs[t]
    a_prev = acs[t - 1] if t > 0 else 1.0
    beta = betas[t]

    def post_var(s):  # β̃_s = β_s (1 - ᾱ_{s-1}) / (1 - ᾱ_s)
        prev = acs[s - 1] if s > 0 else 1.0
        return betas[s] * (1 - prev) / (1 - acs[s])

    log_post = math.log(post_var(t if t > 0 else 1))  # clipped: β̃_0 = 0, use β̃_1
    frac = (v + 1) / 2
    log_var = frac * math.log(beta) + (1 - frac) * log_post
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mean = math.sqrt(a_prev) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x
    return mean, log_var


def ref_kl_bits(m1, lv1, m2, lv2) -> float:
    nats = 0.5 * (-1 + lv2 - lv1 + math.exp(lv1 - lv2) + (m1 - m2) ** 2 * math.exp(-lv2))
    return nats / math.log(2)


def sched_of(kind: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind, variance_type="learned_range")


@pytest.mark.parametrize("kind", SCHEDULES)
def test_posterior_and_kl_match_hand_derived_values_at_t0_t1_and_last(kind):
    sched = sched_of(kind)
    betas = [float(b) for b in sched.betas.double()]
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 2, 500, 998, 999])
    n = len(t)
    x = torch.randn(n, 1, 2, 2, generator=g)
    teacher = torch.cat([torch.randn(n, 1, 2, 2, generator=g), torch.rand(n, 1, 2, 2, generator=g) * 2 - 1], 1)
    student = torch.cat([torch.randn(n, 1, 2, 2, generator=g), torch.rand(n, 1, 2, 2, generator=g) * 2 - 1], 1)
    mean, log_var = _posterior(sched, teacher[:, :1], teacher[:, 1:], x, t)
    total = 0.0
    for i, ti in enumerate(t.tolist()):
        for j in range(4):
            h, w = divmod(j, 2)
            xs, te, tv = float(x[i, 0, h, w]), float(teacher[i, 0, h, w]), float(teacher[i, 1, h, w])
            m_ref, lv_ref = ref_terms(betas, ti, xs, te, tv)
            assert float(mean[i, 0, h, w]) == pytest.approx(m_ref, rel=1e-9, abs=1e-9), (kind, ti)
            assert float(log_var[i, 0, h, w]) == pytest.approx(lv_ref, rel=1e-9, abs=1e-9), (kind, ti)
            ms, lvs = ref_terms(betas, ti, xs, float(student[i, 0, h, w]), float(student[i, 1, h, w]))
            total += ref_kl_bits(m_ref, lv_ref, ms, lvs)
    kl = kl_learned_variance(student, teacher, x, t, sched, 1)
    assert float(kl) == pytest.approx(total / (4 * n), rel=1e-5)


def test_tables_follow_the_schedule_even_at_the_same_address():
    """A freed scheduler's id and betas storage are reused by the next one: the tables must follow the betas'
    values (a stale linear table made the cosine posterior wrong by 1e-3 at t = 0 in CI)."""
    sched, t = sched_of("linear"), torch.tensor([0, 0])
    x, eps, v = torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    linear_mean, _ = _posterior(sched, eps, v, x, t)
    sched.betas.copy_(sched_of("squaredcos_cap_v2").betas)  # same object, same storage, other values
    cosine_mean, _ = _posterior(sched, eps, v, x, t)
    fresh_mean, _ = _posterior(sched_of("squaredcos_cap_v2"), eps, v, x, t)
    assert not torch.allclose(linear_mean, cosine_mean) and torch.equal(cosine_mean, fresh_mean)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_kl_at_t0_is_finite_and_of_the_same_order_as_t1(kind):
    """The old rule took log(max(β̃_0, 1e-20)) at t = 0: KL ~ 1e9-1e13. Clipped, t = 0 is an ordinary term."""
    sched = sched_of(kind)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 4, 4, generator=g)
    teacher = torch.cat([torch.randn(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g) * 2 - 1], 1)
    student = teacher.clone()
    student[:, 1:] = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    kl0 = float(kl_learned_variance(student, teacher, x, torch.tensor([0, 0]), sched, 1))
    kl1 = float(kl_learned_variance(student, teacher, x, torch.tensor([1, 1]), sched, 1))
    assert math.isfinite(kl0) and 0 < kl0 < 10 * kl1 + 1
    old = old_kl_nats(student, teacher, x, torch.tensor([0, 0]), sched)
    assert old > 1e6  # the bug, reproduced


def old_kl_nats(student, teacher, x, t, sched) -> float:
    """dkdm ≤ 0.2's KL (float32, log(max(β̃_t, 1e-20)), nats) — kept here only to reproduce the findings."""
    def post(eps, v):
        ac = sched.alphas_cumprod.float()
        a_t = ac[t].view(-1, 1, 1, 1)
        a_prev = torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones_like(ac[t])).view(-1, 1, 1, 1)
        beta = 1 - a_t / a_prev
        pv = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)
        frac = (v + 1) / 2
        lv = frac * torch.log(beta) + (1 - frac) * torch.log(pv)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x, lv
    mt, lt = post(teacher[:, :1], teacher[:, 1:])
    ms, ls = post(student[:, :1], student[:, 1:])
    return float((0.5 * (ls - lt + torch.exp(lt - ls) + (mt - ms) ** 2 * torch.exp(-ls) - 1.0)).mean())


def test_default_weight_makes_the_kl_term_1443x_stronger_than_before():
    """Old: 0.001 x nats; now: 1 x bits (DKDM: per-term weight 1). For t >= 1 the values agree times ln 2
    (to float32 precision of the old tables: β_t = 1 - ᾱ_t/ᾱ_{t-1} near t = T-1 loses ~1e-3)."""
    sched = sched_of("squaredcos_cap_v2")
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([1, 40, 400, 999])
    x = torch.randn(4, 1, 4, 4, generator=g)
    teacher = torch.cat([torch.randn(4, 1, 4, 4, generator=g), torch.rand(4, 1, 4, 4, generator=g) * 2 - 1], 1)
    student = torch.cat([teacher[:, :1], torch.rand(4, 1, 4, 4, generator=g) * 2 - 1], 1)
    bits = float(kl_learned_variance(student, teacher, x, t, sched, 1))
    nats_old = old_kl_nats(student, teacher, x, t, sched)
    assert bits * math.log(2) == pytest.approx(nats_old, rel=3e-3)
    ratio = DistillConfig().kl_weight * bits / (0.001 * nats_old)
    assert ratio == pytest.approx(1 / (0.001 * math.log(2)), rel=3e-3)  # 1442.7


def ref_discretized_nll(x0: float, mean: float, log_var: float) -> float:
    """-log P(bin of x0) under N(mean, e^log_var), bins of width 2/255, open-ended at ±1 (Ho et al. sec. 3.3)."""
    sd = math.exp(0.5 * log_var)

    def cdf(z):
        return 0.5 * (1 + math.erf((z - mean) / (sd * math.sqrt(2))))

    if x0 < -0.999:
        p = cdf(x0 + 1 / 255)
    elif x0 > 0.999:
        p = 1 - cdf(x0 - 1 / 255)
    else:
        p = cdf(x0 + 1 / 255) - cdf(x0 - 1 / 255)
    return -math.log(max(p, 1e-12))


@pytest.mark.parametrize("kind", SCHEDULES)
def test_vlb_term_matches_the_bound_derived_by_hand(kind):
    """Teacher training's L_t: KL(q(x_{t-1}|x_t,x0) || p) for t ≥ 1 (q: Ho et al. eq. 7 with β̃_t), the
    discretized decoder NLL at t = 0 (edge bins included), in bits per dimension."""
    sched = sched_of(kind)
    betas = [float(b) for b in sched.betas.double()]
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 0, 1, 500, 999])
    n = len(t)
    x0 = (torch.rand(n, 1, 2, 2, generator=g) * 2 - 1)
    x0[1, 0, 0, 0], x0[1, 0, 0, 1] = -1.0, 1.0  # the edge bins
    x = torch.randn(n, 1, 2, 2, generator=g)
    out = torch.cat([torch.randn(n, 1, 2, 2, generator=g), torch.rand(n, 1, 2, 2, generator=g) * 2 - 1], 1)
    total = 0.0
    for i, ti in enumerate(t.tolist()):
        for j in range(4):
            h, w = divmod(j, 2)
            xs, x0s = float(x[i, 0, h, w]), float(x0[i, 0, h, w])
            m_p, lv_p = ref_terms(betas, ti, xs, float(out[i, 0, h, w]), float(out[i, 1, h, w]))
            if ti == 0:
                total += ref_discretized_nll(x0s, m_p, lv_p) / math.log(2)
                continue
            ac = [1.0]
            for b in betas:
                ac.append(ac[-1] * (1 - b))
            a_t, a_prev = ac[ti + 1], ac[ti]
            m_q = math.sqrt(a_prev) * betas[ti] / (1 - a_t) * x0s + math.sqrt(1 - betas[ti]) * (1 - a_prev) / (1 - a_t) * xs
            lv_q = math.log(betas[ti] * (1 - a_prev) / (1 - a_t))
            total += ref_kl_bits(m_q, lv_q, m_p, lv_p)
    got = vlb_term(out, x0, x, t, sched, 1)
    assert float(got) == pytest.approx(total / (4 * n), rel=1e-5)


def test_vlb_term_trains_only_the_variance_channels():
    sched = sched_of("squaredcos_cap_v2")
    g = torch.Generator().manual_seed(4)
    out = torch.randn(3, 2, 4, 4, generator=g).requires_grad_()
    x0, x = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    vlb_term(out, x0, x, torch.tensor([0, 10, 900]), sched, 1).backward()
    assert out.grad[:, :1].abs().max() == 0 and out.grad[:, 1:].abs().max() > 0


def test_dkdm_train_learns_a_learned_range_teacher(tmp_path):
    """`dkdm train` with learned_variance: IDDPM's hybrid loss, both parts logged, saved as learned_range, and
    the variance channel moves towards the bound's optimum (the vlb part falls)."""
    from dkdm.config import TrainConfig, UNetSpec
    from dkdm.teacher import load_teacher
    from dkdm.train import train_teacher

    spec = UNetSpec(block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4, learned_variance=True)
    cfg = TrainConfig(out=str(tmp_path / "lv"), model=spec, steps=60, batch_size=32, lr=3e-3, warmup_steps=5, device="cpu")
    summary = train_teacher(cfg, progress=False)
    assert summary["variance_type"] == "learned_range"
    parts = summary["final_parts"]
    assert set(parts) == {"mse", "vlb"} and all(math.isfinite(v) for v in parts.values())
    assert summary["vlb_first"] > parts["vlb"]
    teacher = load_teacher(str(tmp_path / "lv"), "cpu")
    assert teacher.learned_variance and teacher.scheduler_config["variance_type"] == "learned_range"
