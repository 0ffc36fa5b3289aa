"""Latent text-to-image teachers end to end on a tiny Stable-Diffusion-layout pipeline built from configs:
generate (VAE in the manifest, paired unguided records) -> distill -> full-pipeline export -> evaluate-t2i."""

import dataclasses
import json

import pytest
import torch

from dkdm.cache import backend
from dkdm.cache.embeddings import read_embeddings
from dkdm.cache.inspect import verify
from dkdm.cache.manifest import read_manifest
from dkdm.cache.store import Store
from dkdm.config import DistillConfig, EvaluateConfig, SamplerConfig, UNetSpec
from dkdm.distill.loop import distill
from dkdm.errors import DkdmError
from dkdm.evaluate.t2i import digit_named, evaluate_t2i
from dkdm.generate import generate
from dkdm.teacher import load_teacher

from conftest import gen_cfg, run_cli
from t2i_tiny import save_tiny_t2i
from plain_python import run_plain

PROMPTS = "a handwritten digit 7\nthe number two\na handwritten digit 0\n"


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    teacher = save_tiny_t2i(root / "teacher")
    (root / "prompts.txt").write_text(PROMPTS)
    cache = root / "cache"
    generate(gen_cfg(teacher, cache, trajectories=6, shard_size=3, batch_size=3, prompts=str(root / "prompts.txt"),
                     guidance_scale=3.0, sampler=SamplerConfig(steps=3)), progress=False)
    return root, teacher, cache


def test_teacher_is_a_plain_diffusers_pipeline(t2i):
    from diffusers import StableDiffusionPipeline

    _, teacher, _ = t2i
    pipe = StableDiffusionPipeline.from_pretrained(str(teacher))
    img = pipe("a handwritten digit 7", num_inference_steps=2, output_type="pt").images
    assert tuple(img.shape) == (1, 1, 16, 16)
    t = load_teacher(str(teacher))
    assert t.latent and t.conditional and t.sample_shape == (4, 4, 4)


def test_latent_cache_records_vae_and_unguided_pairs(t2i):
    _, teacher, cache = t2i
    m = read_manifest(Store(cache))
    t = load_teacher(str(teacher))
    vae = m["teacher"]["vae"]
    assert vae["scaling_factor"] == 0.9 and vae["fingerprint"] == t.describe()["vae"]["fingerprint"]
    assert m["record"]["x_t"]["shape"] == [4, 4, 4] and m["record"]["target_kind"].startswith("eps, unguided")
    assert m["totals"]["records"] == 6 * 3 * 2  # trajectories x steps x (prompt, "")
    assert verify(str(cache), deep=True) == []
    emb = read_embeddings(Store(cache))
    assert emb["prompts"][-1] == "" and len(emb["prompts"]) == 4  # 3 prompts + the unconditional row
    recs = [r for s in m["shards"] for r in backend.records(Store(cache), s, torch.float16)]
    uncond = {(r[3]["traj"], r[3]["step"]): r for r in recs if r[3]["cond"] == 3}
    pairs = [(r, uncond[(r[3]["traj"], r[3]["step"])]) for r in recs if r[3]["cond"] != 3]
    assert len(pairs) == len(uncond) == 18
    # record pairs share x_t; targets are the teacher's unguided outputs for the prompt and for ""
    for (x1, t1, y1, a), (x2, t2, y2, b) in pairs[:4]:
        assert torch.equal(x1, x2) and t1 == t2
        want_c = t(x1[None].float(), t1, emb["emb"][a["cond"]][None])
        want_u = t(x1[None].float(), t1, emb["emb"][3][None])
        assert (want_c - y1.float()).abs().max() < 2e-2 and (want_u - y2.float()).abs().max() < 2e-2
        assert (y1 - y2).abs().max() > 0  # the prompt matters: not the same target twice


def test_cache_from_another_vae_is_refused(t2i, tmp_path):
    root, teacher, cache = t2i
    other = save_tiny_t2i(tmp_path / "other", vae_seed=123)  # same U-Net and text encoder, other VAE
    cfg = DistillConfig(teacher=str(other), cache=str(cache), out=str(tmp_path / "s"), steps=1, device="cpu",
                        student=UNetSpec(block_out_channels=(8, 8), attention_levels=(1,), norm_num_groups=4))
    with pytest.raises(DkdmError, match="VAE"):
        distill(cfg, progress=False)
    with pytest.raises(DkdmError, match="already holds cache"):  # nor can another VAE's run resume into it
        generate(gen_cfg(other, cache, trajectories=6, shard_size=3, batch_size=3, prompts=str(root / "prompts.txt"),
                         guidance_scale=3.0, sampler=SamplerConfig(steps=3)), progress=False)


@pytest.fixture(scope="module")
def student(t2i):
    root, teacher, cache = t2i
    out = root / "run"
    distill(DistillConfig(cache=str(cache), out=str(out), steps=3, batch_size=8, device="cpu", checkpoint_every=0,
                          tracker="none", student=UNetSpec(block_out_channels=(8, 8), attention_levels=(1,), norm_num_groups=4)),
            progress=False)
    return out / "student"


def test_distill_exports_a_full_pipeline(student, t2i):
    _, teacher, _ = t2i
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        assert (student / part).exists(), part
    assert (student.parent / "student_samples.png").stat().st_size > 0
    # the teacher's parts are copied bytes for bytes: the student decodes with the teacher's VAE
    assert (student / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (teacher / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    card = json.loads((student / "dkdm_student.json").read_text())
    assert card["teacher"]["vae"]["fingerprint"]


def test_exported_student_runs_in_plain_diffusers(student):
    code = ("import sys, torch\nfrom diffusers import StableDiffusionPipeline\n"
            f"p = StableDiffusionPipeline.from_pretrained({str(student)!r})\n"
            "g = torch.Generator().manual_seed(0)\n"
            "img = p('a handwritten digit 7', num_inference_steps=3, guidance_scale=3.0, generator=g, output_type='np').images\n"
            "assert img.shape == (1, 16, 16, 1), img.shape\n"
            "assert not any(m == 'dkdm' or m.startswith('dkdm.') for m in sys.modules), 'dkdm was imported'\n"
            "print('ok', p.unet.config.block_out_channels)\n")
    out = run_plain(code, student.parent)
    assert "ok [8, 8]" in out


def test_digit_named():
    assert digit_named("a handwritten digit 7") == 7 and digit_named("the number two") == 2
    assert digit_named("a cat") is None and digit_named("7 or 8") is None and digit_named("digit 17") is None


def test_evaluate_t2i_with_prompts(student, t2i, tmp_path):
    root, teacher, _ = t2i
    cfg = EvaluateConfig(teacher=str(teacher), students=[str(student)], out=str(tmp_path / "ev"), num_samples=12,
                         batch_size=6, speed_repeats=2, device="cpu", cache_root=str(tmp_path / "cr"),
                         sampler=SamplerConfig(steps=3))
    r = evaluate_t2i(cfg, str(root / "prompts.txt"), guidance_scale=3.0, sweep_guidance=[1.0], sweep_samples=6, progress=False)
    t, s = r["models"]["teacher"], r["models"]["run"]
    for m in (t, s):
        assert m["adherence"]["samples"] == 12 and 0 <= m["adherence"]["accuracy"] <= 1
        assert m["fid"] > 0 and m["speed"]["unet_s_per_image"] > 0
        assert m["speed"]["e2e_s_per_image"] > m["speed"]["unet_s_per_image"]
        f = m["flops_per_image"]
        assert f["total"] == f["unet"] + f["vae_decode"] + f["text_encoder"] and f["vae_decode"] > 0
    assert s["flops_per_image"]["unet"] < t["flops_per_image"]["unet"]
    assert t["speed"]["speedup_unet"] == 1.0
    assert len(r["guidance_sweep"]) == 2 and r["guidance_sweep"][0]["samples"] == 6
    assert (tmp_path / "ev" / "report.md").read_text().count("| run |") == 2
    assert (tmp_path / "ev" / "samples_side_by_side.png").is_file()
    # the teacher's images are reproducible from seeds: a second run gives the same adherence and FID
    r2 = evaluate_t2i(cfg, str(root / "prompts.txt"), guidance_scale=3.0, progress=False)
    assert r2["models"]["teacher"]["fid"] == pytest.approx(t["fid"]) and r2["models"]["run"]["adherence"] == s["adherence"]
    # evaluation seeds, as `dkdm evaluate`: apart from the cache's trajectories; raw seeds from 0 are refused
    assert r["seed_space"] == "evaluation" and r["seed_overlap"] == {str(student): 0}
    with pytest.raises(DkdmError, match="it was trained on"):
        evaluate_t2i(dataclasses.replace(cfg, seed_space="trajectory", seed=0), str(root / "prompts.txt"),
                     guidance_scale=3.0, progress=False)


def test_evaluate_t2i_refuses_pixel_teacher(tiny_teacher, tmp_path):
    (tmp_path / "p.txt").write_text("a seven\n")
    r = run_cli("evaluate-t2i", "--teacher", tiny_teacher, "--prompts", tmp_path / "p.txt", "--out", tmp_path / "e")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "not a latent" in r.stderr


def test_clip_score_with_a_tiny_clip(tmp_path):
    from transformers import CLIPModel

    from dkdm.evaluate.t2i import clip_score
    from t2i_tiny import save_tiny_clip

    path = save_tiny_clip(tmp_path / "clip")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    prompts = ["a handwritten digit 7", "the number two", "a 3", "digit 9"]
    score = clip_score(images, prompts, str(path))
    # the same number from CLIPModel's own forward: logits_per_image = exp(logit_scale) * cos(image, text)
    model = CLIPModel.from_pretrained(str(path)).eval()
    x = torch.nn.functional.interpolate(((images + 1) / 2).expand(-1, 3, -1, -1), size=(32, 32), mode="bicubic",
                                        align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(path))(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=(x - mean) / std, **ids)
        cos = out.logits_per_image.diagonal() / model.logit_scale.exp()
    assert score == pytest.approx(float(100 * cos.clamp(min=0).mean()), abs=1e-3)
    with pytest.raises(DkdmError, match="--clip"):
        clip_score(images, prompts, str(tmp_path / "missing"))
