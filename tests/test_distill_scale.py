"""The distiller at trainer scale: real-image mixing, the KL term, feature KD, exact resume, pruning."""

import os
import signal

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from conftest import save_tiny_teacher
from dkdm.config import DistillConfig, SamplerConfig, UNetSpec
from dkdm.distill import checkpoint as ckpt
from dkdm.distill.loop import distill, row_split
from dkdm.distill.losses import _posterior, kl_learned_variance
from dkdm.distill.real import load_real_images
from dkdm.errors import DkdmError

STUDENT = UNetSpec(block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4)


def dcfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), student=STUDENT, steps=3, batch_size=8, shuffle_buffer=64, num_workers=0,
                device="cpu", log_every=1, sampler=SamplerConfig(steps=5), tracker="none", checkpoint_every=0)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Six real PNGs (three grey, three RGB of another size) to mix in."""
    d = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for i in range(6):
        arr = rng.integers(0, 256, size=(16, 16) if i < 3 else (20, 20, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
    return d


def _x0_of(x_t, t, eps, sched):
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_real_image_mixing_ratios(tiny_teacher, tiny_cache, image_folder, tmp_path, ratio):
    real = load_real_images(str(image_folder), 1, 16)
    assert real.shape == (6, 1, 16, 16) and real.min() >= -1 and real.max() <= 1
    cfg = dcfg(tmp_path, teacher=str(tiny_teacher), cache=str(tiny_cache), source="cache", real=str(image_folder),
               real_ratio=ratio, steps=2)
    seen = []
    res = distill(cfg, progress=False, on_step=lambda step, micro, acc, s: seen.append(micro[0]))
    n_real = row_split(cfg)["real"]
    assert n_real == round(8 * ratio) and res["rows"]["cache"] == 8 - n_real
    sched = DDPMScheduler.from_pretrained(str(tiny_teacher), subfolder="scheduler")
    for b in seen:
        assert len(b.x) == 8 and b.n_teacher == 8 - n_real
        if n_real:  # real rows are x_t = sqrt(a) x0 + sqrt(1-a) eps of one of the folder's images
            x0 = _x0_of(b.x[b.n_teacher:], b.t[b.n_teacher:], b.eps[b.n_teacher:], sched)
            dist = torch.cdist(x0.flatten(1), real.flatten(1)).min(dim=1).values
            assert (dist < 1e-3).all()
        if b.n_teacher:  # teacher rows come from the cache's schedule, real rows from all 1000 training steps
            assert set(b.t[: b.n_teacher].tolist()) <= {int(t) for t in (999, 799, 599, 399, 199)}
    assert (tmp_path / "run" / "student" / "unet" / "config.json").is_file()


def test_real_digits_alias_and_webdataset(tmp_path, image_folder):
    import webdataset as wds

    digits = load_real_images("digits", 1, 16)
    assert digits.shape == (1797, 1, 16, 16)
    with wds.TarWriter(str(tmp_path / "imgs.tar")) as w:
        for i, f in enumerate(sorted(image_folder.glob("*.png"))):
            w.write({"__key__": f"s{i:03d}", "png": f.read_bytes()})
    from_tar = load_real_images(str(tmp_path / "imgs.tar"), 1, 16)
    assert torch.allclose(from_tar, load_real_images(str(image_folder), 1, 16))
    with pytest.raises(DkdmError, match="no PNG/JPG"):
        (tmp_path / "empty").mkdir()
        load_real_images(str(tmp_path / "empty"), 1, 16)


def test_real_ratio_out_of_range_is_refused(tmp_path, tiny_teacher):
    with pytest.raises(DkdmError, match=r"\[0, 1\]"):
        distill(dcfg(tmp_path, teacher=str(tiny_teacher), real="digits", real_ratio=1.5), progress=False)
    with pytest.raises(DkdmError, match="needs --real"):
        distill(dcfg(tmp_path, teacher=str(tiny_teacher), real_ratio=0.5, source="live"), progress=False)


def test_kl_posterior_matches_diffusers_learned_range():
    """Our batched posterior (per-sample t) equals what diffusers' own DDPM step computes, one t at a time.
    At t = 0 diffusers takes log(1e-20) for the posterior variance, we the clipped log β̃_1 (tests/test_losses.py)."""
    from diffusers.utils.torch_utils import randn_tensor

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                          clip_sample=False)
    t = torch.tensor([0, 1, 10, 500, 999])
    v = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    x = torch.randn(5, 1, 2, 2)
    eps = torch.randn(5, 1, 2, 2)
    mean, log_var = _posterior(sched, eps, v, x, t)
    for i, ti in enumerate(t.tolist()):
        ref = sched._get_variance(ti, predicted_variance=v[i])  # diffusers returns the log-variance here
        if ti > 0:
            assert torch.allclose(log_var[i].float(), ref, atol=1e-3)  # diffusers: float32; ours: float64
        # diffusers' step = mean + exp(log_var / 2) * noise (no noise at t=0): recover its mean
        out = sched.step(torch.cat([eps[i:i + 1], v[i:i + 1]], 1), ti, x[i:i + 1],
                         generator=torch.Generator().manual_seed(i)).prev_sample
        noise = randn_tensor((1, 1, 2, 2), generator=torch.Generator().manual_seed(i))
        step_mean = out - (torch.exp(0.5 * ref) * noise if ti > 0 else 0)
        assert torch.allclose(mean[i:i + 1].float(), step_mean, atol=1e-4), ti


def test_kl_is_zero_for_identical_outputs_and_trains_only_variance():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    x, t = torch.randn(4, 1, 4, 4), torch.tensor([5, 50, 500, 900])
    teacher = torch.cat([torch.randn(4, 1, 4, 4), torch.rand(4, 1, 4, 4) * 2 - 1], 1)
    assert kl_learned_variance(teacher.clone(), teacher, x, t, sched, 1).abs() < 1e-6
    student = (teacher + 0.3 * torch.randn_like(teacher)).requires_grad_(True)
    kl = kl_learned_variance(student, teacher, x, t, sched, 1)
    assert kl > 0
    kl.backward()
    assert student.grad[:, :1].abs().max() == 0  # the mean is stop-gradiented (IDDPM)
    assert student.grad[:, 1:].abs().max() > 0


def test_distill_learned_variance_teacher_uses_kl(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "lv", learned_variance=True)
    rows = []
    res = distill(dcfg(tmp_path, teacher=str(teacher), source="live", pool="shuffled", steps=3, kl_weight=1.0),
                  progress=False)
    log = (tmp_path / "run" / "distill_log.csv").read_text().splitlines()
    header, first = log[0].split(","), log[1].split(",")
    kl = float(first[header.index("kl")])
    loss, mse = float(first[header.index("loss")]), float(first[header.index("eps_mse")])
    assert kl > 0 and abs(loss - (mse + kl)) < 1e-4
    assert UNet2DModel.from_pretrained(str(tmp_path / "run" / "student" / "unet")).config.out_channels == 2
    assert res["final_loss"] > 0 and not rows


def test_feature_kd_on_matching_blocks(tiny_teacher, tmp_path):
    # same widths as the teacher; seed 1 so the student does not start as an exact copy of it (built with seed 0)
    same = UNetSpec(block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4)
    distill(dcfg(tmp_path, teacher=str(tiny_teacher), source="live", student=same, feature_kd=1.0, steps=2, seed=1), progress=False)
    log = (tmp_path / "run" / "distill_log.csv").read_text().splitlines()
    header, first = log[0].split(","), log[1].split(",")
    assert float(first[header.index("feature_kd")]) > 0
    with pytest.raises(DkdmError, match="blocks match"):
        distill(dcfg(tmp_path, teacher=str(tiny_teacher), source="live", feature_kd=1.0), progress=False)


def test_pool_seeded_from_cache_spends_no_teacher_steps(tiny_teacher, tiny_cache, tmp_path):
    res = distill(dcfg(tmp_path, teacher=str(tiny_teacher), cache=str(tiny_cache), source="live", pool="dynamic",
                       pool_init="cache", steps=2), progress=False)
    assert res["teacher_forwards"] == 2 * 8  # only the two draws of b=8; the pool of rho*T*b=16 came from records


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "student" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_ctrl_c_then_resume_reproduces_uninterrupted_run(tiny_teacher, tiny_cache, tmp_path):
    """Cache + live dynamic pool + real images at once: every data position must survive the restart."""
    common = dict(teacher=str(tiny_teacher), cache=str(tiny_cache), source="both", pool="dynamic", real="digits",
                  real_ratio=0.25, steps=6, lr=3e-3, warmup_steps=2, ema_decay=0.9)
    full = dcfg(tmp_path / "a", **common)
    distill(full, progress=False)

    def ctrl_c_at_3(step, micro, acc, student):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal: the handler finishes the step and saves

    cut = dcfg(tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        distill(cut, progress=False, on_step=ctrl_c_at_3)
    assert [p.name for p in ckpt.checkpoints(cut.out)] == ["step-00000004"]
    assert not (tmp_path / "b" / "run" / "student").exists()
    res = distill(dcfg(tmp_path / "b", resume="latest", **common), progress=False)
    assert res["start_step"] == 4
    a, b = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # the loss curve continues: the resumed log has every step once
    steps = [int(r.split(",")[0]) for r in (tmp_path / "b" / "run" / "distill_log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(6))
    # and a different batch size is refused rather than silently misaligned
    with pytest.raises(DkdmError, match="batch_size"):
        distill(dcfg(tmp_path / "b", resume=str(ckpt.checkpoints(cut.out)[0]), **{**common, "batch_size": 4}), progress=False)


def test_checkpoints_are_pruned(tiny_cache, tmp_path):
    distill(dcfg(tmp_path, teacher="", cache=str(tiny_cache), steps=5, checkpoint_every=1, checkpoints_keep=2), progress=False)
    assert [p.name for p in ckpt.checkpoints(tmp_path / "run")] == ["step-00000004", "step-00000005"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    # nothing in a checkpoint needs unpickling except accelerate's RNG/optimizer files, loaded weights_only
    names = {p.name for p in ckpt.checkpoints(tmp_path / "run")[-1].iterdir()}
    assert {"model.safetensors", "ema.safetensors", "data_cache_0.safetensors", "trainer_state.json"} <= names


def test_bf16_autocast_with_gradient_accumulation_on_cpu(tiny_cache, tiny_teacher, tmp_path):
    """accelerate's bf16 autocast really runs the student in bf16, accumulating 2 micro-batches per step;
    the exported student is fp32 and training moved its weights."""
    seen, dtypes, before = [], [], []

    def on_step(step, micro, acc, student):
        if not seen:
            net = acc.unwrap_model(student)
            net.conv_out.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
            before.extend(p.detach().clone() for p in net.parameters())
        seen.append((len(micro), acc.mixed_precision, acc.gradient_accumulation_steps))

    res = distill(dcfg(tmp_path, cache=str(tiny_cache), teacher=str(tiny_teacher), mixed_precision="bf16", grad_accum=2,
                       export_ema=False), progress=False, on_step=on_step)
    assert seen == [(2, "bf16", 2)] * 3 and np.isfinite(res["final_loss"])
    assert dtypes and set(dtypes) == {torch.bfloat16}
    u = UNet2DModel.from_pretrained(tmp_path / "run" / "student" / "unet")
    after = list(u.parameters())
    assert after[0].dtype == torch.float32 and len(after) == len(before)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
