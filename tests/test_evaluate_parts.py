"""Evaluator parts on real files: reference statistics cache, energy counters, paired score, Pareto front."""

import numpy as np
import pytest
import torch
from PIL import Image

from dkdm.data.digits import load_digits_images
from dkdm.evaluate import metrics
from dkdm.evaluate.energy import open_counter
from dkdm.evaluate.features import DigitsClassifierFeatures
from dkdm.evaluate.paired import is_deterministic, paired_scores
from dkdm.evaluate.reference import load_npz, real_reference
from dkdm.evaluate.sweep import cheapest_reaching, pareto_front


@pytest.fixture(scope="module")
def digits_feats():
    return DigitsClassifierFeatures()


def test_fid_on_real_features_self_zero_and_shifted_larger(digits_feats):
    x, _ = load_digits_images(16)
    f = digits_feats(x)
    shifted = digits_feats(torch.roll(x, shifts=(3, 3), dims=(2, 3)))
    assert abs(metrics.fid(f, f)) < 1e-6
    split = metrics.fid(f[:900], f[900:])  # two halves of the same data: the noise floor
    assert metrics.fid(f, shifted) > 3 * split
    assert metrics.kid(f[:900], f[900:], num_subsets=20) < 0.2 * metrics.kid(f, shifted, num_subsets=20)


def test_reference_from_folder_is_cached_and_reloaded_without_pickle(tmp_path, digits_feats):
    x, _ = load_digits_images(16)
    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(60):
        Image.fromarray(((x[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    ref = real_reference(str(folder), digits_feats, (1, 16, 16), str(tmp_path / "cache"), progress=False)
    assert ref.n == 60 and ref.kind == "folder" and ref.cached.startswith(str(tmp_path / "cache" / "reference-stats"))
    again = real_reference(str(folder), digits_feats, (1, 16, 16), str(tmp_path / "cache"), progress=False)
    assert np.allclose(again.mu, ref.mu) and np.allclose(again.feats, ref.feats, atol=1e-4)
    assert abs(ref.fid(digits_feats(x[:60]))) < 0.5  # PNG round trip of the same images: near zero
    stats_only = tmp_path / "mu_sigma.npz"
    np.savez(stats_only, mu=ref.mu, sigma=ref.sigma)
    r2 = load_npz(str(stats_only))
    assert r2.kid(ref.feats) is None and r2.fid(ref.feats) == pytest.approx(ref.fid(ref.feats))
    (folder / "extra.png").write_bytes((folder / "000.png").read_bytes())  # new images: new statistics file
    third = real_reference(str(folder), digits_feats, (1, 16, 16), str(tmp_path / "cache"), progress=False)
    assert third.n == 61 and third.cached != ref.cached


def test_energy_unavailable_without_counter(tmp_path):
    counter, reason = open_counter("cpu", rapl_root=tmp_path)  # an empty powercap tree: nothing to read
    assert counter is None and "RAPL" in reason


def test_rapl_counter_reads_package_domains_and_wraps(tmp_path):
    d = tmp_path / "intel-rapl:0"
    (tmp_path / "intel-rapl:0:0").mkdir(parents=True)  # a sub-zone (core): must not be double-counted
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("5\n")
    d.mkdir()
    (d / "energy_uj").write_text("999000000\n")
    (d / "max_energy_range_uj").write_text("1000000000\n")
    counter, reason = open_counter("cpu", rapl_root=tmp_path)
    assert reason is None
    token = counter.start()
    (d / "energy_uj").write_text("2000000\n")  # wrapped past the max range
    assert counter.stop(token) == pytest.approx(3.0)


def test_paired_score_zero_for_same_images_and_positive_otherwise():
    a = torch.rand(10, 1, 16, 16) * 2 - 1
    same = paired_scores(a, a.clone())
    assert same["pixel_rmse"]["mean"] == 0 and same["pixel_rmse"]["max"] == 0
    b = a.clone()
    b[3] += 0.5
    diff = paired_scores(a, b)
    assert diff["pixel_rmse_per_seed"][3] == pytest.approx(0.5) and diff["pixel_rmse"]["median"] == 0
    assert is_deterministic("ddim", 0.0) and not is_deterministic("ddim", 1.0) and not is_deterministic("ddpm", 0.0)


def test_pareto_front_and_cheapest_setting():
    pts = [{"model": "t", "scheduler": "ddim", "steps": 50, "fid": 10.0, "seconds_per_image": 1.0},
           {"model": "s", "scheduler": "ddim", "steps": 50, "fid": 12.0, "seconds_per_image": 0.3},
           {"model": "s", "scheduler": "ddpm", "steps": 50, "fid": 15.0, "seconds_per_image": 0.35},  # dominated
           {"model": "s", "scheduler": "dpm++", "steps": 5, "fid": 20.0, "seconds_per_image": 0.05}]
    front = pareto_front(pts)
    assert [(p["scheduler"], p["steps"], p["model"]) for p in front] == [("dpm++", 5, "s"), ("ddim", 50, "s"), ("ddim", 50, "t")]
    assert cheapest_reaching(pts, 12.5)["model"] == "s" and cheapest_reaching(pts, 5.0) is None


def test_reference_from_webdataset_shards(tmp_path, digits_feats):
    import io

    import webdataset as wds

    x, _ = load_digits_images(16)
    with wds.TarWriter(str(tmp_path / "real-000000.tar")) as sink:
        for i in range(40):
            buf = io.BytesIO()
            Image.fromarray(((x[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(buf, format="PNG")
            sink.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(i % 10).encode()})
    ref = real_reference(str(tmp_path / "real-000000.tar"), digits_feats, (1, 16, 16), str(tmp_path / "cache"),
                         limit=30, progress=False)
    assert ref.kind == "wds" and ref.n == 30
    assert abs(ref.fid(digits_feats(x[:30]))) < 0.5


def test_sweep_scheduler_avoids_a_start_at_zero_alpha_bar():
    from diffusers import DDPMScheduler

    from dkdm.evaluate.sweep import scheduler_for

    cos = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
    sched, spacing = scheduler_for("dpm++", 10, "trailing", cos)
    assert spacing == "leading" and int(sched.timesteps[0]) == 900
    assert scheduler_for("ddim", 10, "trailing", cos)[1] == "trailing"  # DDIM predicts x0 directly: fine at t=999
    linear = dict(DDPMScheduler(beta_schedule="linear").config)
    assert scheduler_for("euler", 10, "trailing", linear)[1] == "trailing"
