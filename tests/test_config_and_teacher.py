
import pytest
import torch
from safetensors.torch import load_file, save_file

from dkdm.config import PIPELINES_DIR, Recipe, load_recipe
from dkdm.errors import DkdmError
from dkdm.teacher import fingerprint, load_teacher


def test_digits_recipe_loads_typed():
    r = load_recipe("digits")
    assert isinstance(r, Recipe)
    assert r.train.model.block_out_channels == (32, 64, 64)
    # the cache walks short offset grids that cover every timestep; the student is sampled with DDIM-25
    assert r.generate.sampler.coverage == "offsets" and r.evaluate.sampler.steps == 25


def test_recipe_unknown_key_is_named(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[generate]\ntrajectoriez = 3\n")
    with pytest.raises(DkdmError, match="trajectoriez"):
        load_recipe(p)


def test_builtin_teacher_loads_offline_with_stable_fingerprint():
    t = load_teacher("builtin:digits")
    assert t.sample_shape == (1, 16, 16)
    assert len(t.fingerprint) == 64
    assert fingerprint(t.unet) == t.fingerprint  # recomputing gives the same id
    out = t(torch.zeros(2, 1, 16, 16), 500)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()


def test_local_pipeline_and_flat_layouts(tiny_teacher, tmp_path):
    a = load_teacher(str(tiny_teacher))
    # flat model layout (config.json + weights at the root, scheduler_config.json beside them)
    flat = tmp_path / "flat"
    a.unet.save_pretrained(flat)
    (flat / "scheduler_config.json").write_text((tiny_teacher / "scheduler" / "scheduler_config.json").read_text())
    b = load_teacher(str(flat))
    assert a.fingerprint == b.fingerprint
    assert b.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"


def test_fingerprint_changes_with_weights(tiny_teacher, tmp_path):
    import shutil

    copy = tmp_path / "t2"
    shutil.copytree(tiny_teacher, copy)
    f = copy / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    k = sorted(sd)[0]
    sd[k] = sd[k] + 1e-3
    save_file(sd, str(f))
    assert load_teacher(str(copy)).fingerprint != load_teacher(str(tiny_teacher)).fingerprint


@pytest.mark.parametrize("src,msg", [("/definitely/not/here", "does not exist"), ("./nope", "does not exist"),
                                     ("builtin:cats", "unknown builtin"), ("no-such-org/no-such-model", "could not load teacher")])
def test_bad_teacher_sources(src, msg):
    with pytest.raises(DkdmError, match=msg):
        load_teacher(src)


def test_folder_without_model_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DkdmError, match="neither unet/"):
        load_teacher(str(tmp_path))


@pytest.mark.parametrize("recipe", sorted(p.stem for p in PIPELINES_DIR.glob("*.toml")))
def test_every_shipped_recipe_loads_into_typed_configs(recipe):
    """A typo in a committed recipe (unknown key, wrong type) fails here, not on a user's GPU box."""
    r = load_recipe(recipe)
    assert r.distill.steps > 0 and r.generate.trajectories > 0
