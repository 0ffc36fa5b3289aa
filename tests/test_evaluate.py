import json

import numpy as np
import pytest

from dkdm.config import EvaluateConfig, SamplerConfig
from dkdm.errors import DkdmError
from dkdm.evaluate import metrics
from dkdm.evaluate.digits_features import DigitsFeatures, load_digits_extractor
from dkdm.evaluate.run import evaluate


def test_fid_self_zero_and_shift_positive():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 16))
    assert abs(metrics.fid(a, a)) < 1e-6
    assert metrics.fid(a, a + 1.0) > 15  # mean shift of 1 in 16 dims adds 16
    b = rng.normal(size=(600, 16))
    assert metrics.fid(a, b) < 1.0


def test_kid_unbiased_on_identical_distributions():
    rng = np.random.default_rng(1)
    vals = [metrics.kid(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)), num_subsets=20, seed=i) for i in range(5)]
    assert abs(np.mean(vals)) < 0.01
    assert metrics.kid(rng.normal(size=(300, 16)), rng.normal(1.0, size=(300, 16)), num_subsets=20) > 0.5


def test_digits_classifier_is_accurate_and_verified():
    import torch

    from dkdm.data.digits import load_digits_images, split_indices

    net = load_digits_extractor()
    x, y = load_digits_images(16)
    _, te = split_indices(len(x), 0.2, 0)
    with torch.no_grad():
        acc = (net(x[te]).argmax(1) == y[te]).float().mean().item()
    assert acc >= 0.97
    assert DigitsFeatures()(x[:5]).shape == (5, 128)


def test_real_digits_split_fid_is_low_and_noise_is_high():
    import torch

    from dkdm.data.digits import load_digits_images

    f = DigitsFeatures()
    x, _ = load_digits_images(16)
    real = f(x)
    noise = f(torch.rand(900, 1, 16, 16) * 2 - 1)
    assert metrics.fid(real[:900], real[900:]) * 3 < metrics.fid(noise, real)


def test_evaluate_teacher_against_itself(tiny_teacher, tmp_path):
    """A 'student' identical to the teacher: same images for the same seeds, FIDs equal."""
    cfg = EvaluateConfig(teacher=str(tiny_teacher), students=[str(tiny_teacher)], out=str(tmp_path / "ev"),
                         sampler=SamplerConfig(steps=3), num_samples=40, batch_size=20, speed_repeats=1, device="cpu",
                         cache_root=str(tmp_path / "cache"), embeddings=False)
    rep = evaluate(cfg, progress=False)
    assert rep["student"]["fid"] == pytest.approx(rep["teacher"]["fid"], rel=1e-6)
    paired = rep["student"]["paired"]
    assert paired["pixel_rmse"]["mean"] == 0 and paired["feature_l2"]["max"] == 0  # same noise, same model: same images
    assert abs(rep["student"]["fid_vs_teacher"]) < 1e-3  # sqrtm of a singular 128-d covariance: not exactly 0
    energy = rep["teacher"]["energy"]
    assert (energy["available"] and energy["joules_per_image"] > 0) or (not energy["available"] and energy["reason"])
    assert rep["student"]["params"] == rep["teacher"]["params"]
    assert rep["teacher"]["flops_per_image"] == 3 * rep["teacher"]["flops_per_step"] > 0
    on_disk = json.loads((tmp_path / "ev" / "report.json").read_text())
    for k in ("fid", "kid", "images_per_s", "params"):
        assert isinstance(on_disk["teacher"][k], (int, float)) and isinstance(on_disk["student"][k], (int, float))
    assert isinstance(on_disk["speedup"], float)
    assert (tmp_path / "ev" / "samples_side_by_side.png").stat().st_size > 0
    assert "| teacher |" in (tmp_path / "ev" / "report.md").read_text()


def test_evaluate_needs_a_student(tiny_teacher, tmp_path):
    with pytest.raises(DkdmError, match="student"):
        evaluate(EvaluateConfig(teacher=str(tiny_teacher), students=[], out=str(tmp_path)), progress=False)
    with pytest.raises(DkdmError, match="not found"):
        evaluate(EvaluateConfig(teacher=str(tiny_teacher), students=[str(tmp_path / "none")], out=str(tmp_path),
                                num_samples=4, device="cpu", cache_root=str(tmp_path / "cache")), progress=False)
    with pytest.raises(DkdmError, match="sweep scheduler"):
        evaluate(EvaluateConfig(teacher=str(tiny_teacher), students=[str(tiny_teacher)], out=str(tmp_path),
                                sweep_schedulers=["heun"], sweep_steps=[2]), progress=False)


def test_full_report_two_students_sweep_and_teacher_reference(tiny_teacher, other_teacher, tmp_path):
    """Data-free reference (teacher samples), two students, a 2x2 sweep, PCA/t-SNE: every figure and PNG."""
    out = tmp_path / "ev"
    cfg = EvaluateConfig(teacher=str(tiny_teacher), students=[str(tiny_teacher), str(other_teacher)], out=str(out),
                         sampler=SamplerConfig(scheduler="ddpm", steps=3), num_samples=24, batch_size=12, speed_repeats=1,
                         device="cpu", reference="teacher", cache_root=str(tmp_path / "cache"), speed_batch_sizes=[12, 1],
                         sweep_schedulers=["ddim", "dpm++"], sweep_steps=[2, 4], sweep_samples=12, embedding_points=20)
    rep = evaluate(cfg, progress=False)
    assert rep["reference"]["kind"] == "teacher" and rep["teacher"]["fid"] > 0  # other seeds: the noise floor
    assert not rep["paired_sampler"]["reused_main_samples"] and rep["paired_sampler"]["scheduler"] == "ddim"
    assert set(rep["students"]) == {"tiny", "other"}
    assert rep["students"]["tiny"]["paired"]["pixel_rmse"]["max"] == 0
    assert rep["students"]["other"]["paired"]["pixel_rmse"]["mean"] > 0.01  # different weights, different images
    assert rep["students"]["other"]["fid_vs_teacher"] > rep["students"]["tiny"]["fid_vs_teacher"]
    assert set(rep["teacher"]["throughput"]) == {"12", "1"}
    sw = rep["sweep"]
    assert len(sw["points"]) == 3 * 2 * 2
    assert {(p["model"], p["scheduler"], p["steps"]) for p in sw["pareto_time"]} <= {(p["model"], p["scheduler"], p["steps"]) for p in sw["points"]}
    for p in sw["points"]:
        assert p["seconds_per_image"] > 0 and np.isfinite(p["fid"])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["embeddings"]["groups"] == {"teacher": 20, "tiny": 20, "other": 20}  # no real data in the data-free case
    for png in ("samples_side_by_side.png", "paired_fidelity.png", "quality_vs_steps.png", "pareto_time.png",
                "features_pca.png", "features_tsne.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "Pareto front" in md and "| other |" in md and "![quality vs time (Pareto front)](pareto_time.png)" in md
