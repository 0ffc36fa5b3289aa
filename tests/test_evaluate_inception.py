"""clean-fid's Inception route, offline: missing file, sha256 check, clean resize, a small TorchScript stand-in."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dkdm.errors import DkdmError
from dkdm.evaluate.features import INCEPTION_FILE, INCEPTION_SHA256, InceptionFeatures, load_extractor, sha256_file

from conftest import run_cli


class TinyInception(nn.Module):
    """Same TorchScript interface as inception-2015-12-05.pt: `.layers(x)` on 299x299 inputs, 2048 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.AvgPool2d(16), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(16))

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inc") / "my-extractor.pt"
    torch.jit.script(TinyInception()).save(str(path))
    return path


def test_missing_inception_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("DKDM_INCEPTION", raising=False)
    with pytest.raises(DkdmError, match=INCEPTION_FILE):
        InceptionFeatures(None)
    with pytest.raises(DkdmError, match=f"{tmp_path}/nothing.pt not found.*{INCEPTION_FILE}"):
        InceptionFeatures(str(tmp_path / "nothing.pt"))
    monkeypatch.setenv("DKDM_INCEPTION", str(tmp_path))  # a folder: looks for the canonical name inside
    with pytest.raises(DkdmError, match=f"{tmp_path}/{INCEPTION_FILE} not found"):
        load_extractor("inception", (3, 32, 32))


def test_sha256_check_rejects_a_wrong_file(tiny_inception):
    with pytest.raises(DkdmError, match=f"sha256 {sha256_file(tiny_inception)}, not {INCEPTION_SHA256}"):
        InceptionFeatures(str(tiny_inception))


def test_clean_resize_and_features_through_clean_fid_wrapper(tiny_inception):
    ext = InceptionFeatures(str(tiny_inception), sha256=sha256_file(tiny_inception))
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 1, 16, 16, generator=g) * 2 - 1  # grey images are repeated to RGB
    f = ext(a)
    assert f.shape == (6, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    assert np.allclose(ext(a[:2]), f[:2])  # batching does not change features
    # clean-fid's clean mode by hand: uint8, PIL bicubic to 299x299 in float per channel, then (x - 128) / 128
    u8 = ((a[0, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    up = np.asarray(Image.fromarray(u8.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC)).clip(0, 255)
    x = torch.from_numpy(np.stack([up] * 3))[None].float()
    ref = torch.jit.load(str(tiny_inception)).layers((x - 128) / 128).reshape(1, 2048)
    assert np.allclose(f[0], ref.detach().double().numpy(), atol=1e-5)
    assert np.abs(ext((a + 0.8).clamp(-1, 1)) - f).mean() > 1e-3  # brighter images, other features


def test_cli_missing_inception_is_one_line(tiny_teacher, tmp_path):
    r = run_cli("evaluate", "--teacher", tiny_teacher, "--student", tiny_teacher, "--features", "inception",
                "--inception", tmp_path / "absent.pt", "--out", tmp_path / "ev", "--device", "cpu", "--num-samples", "4",
                "--quiet")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and INCEPTION_FILE in lines[0] and "Traceback" not in r.stderr
