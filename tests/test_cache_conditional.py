"""Text-conditioned teachers: embeddings computed once per unique prompt, records point at their row; CFG targets."""

import json
import string

import numpy as np
import pytest
import torch

from dkdm.cache import backend
from dkdm.cache.embeddings import read_embeddings
from dkdm.cache.inspect import verify
from dkdm.cache.manifest import read_manifest
from dkdm.cache.reader import CacheReader
from dkdm.cache.store import Store
from dkdm.errors import DkdmError
from dkdm.generate import generate
from dkdm.teacher import load_teacher

from conftest import gen_cfg


def save_tiny_conditional_teacher(path, seed=0):
    """UNet2DConditionModel + CLIPTextModel/CLIPTokenizer from configs and a hand-written character vocab."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase + string.digits:
            vocab[c + suffix] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    tok = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"), model_max_length=8)
    tok.save_pretrained(path / "tokenizer")
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=8, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    enc.save_pretrained(path / "text_encoder")
    unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    unet.save_pretrained(path / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(path / "scheduler")
    return path


@pytest.fixture(scope="module")
def cond_teacher(tmp_path_factory):
    return save_tiny_conditional_teacher(tmp_path_factory.mktemp("cteacher") / "t2i")


def test_conditional_cache(cond_teacher, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a seven\n\na two\na seven\nzero\n")  # blank line skipped; "a seven" repeats
    cfg = gen_cfg(cond_teacher, tmp_path / "c", trajectories=6, shard_size=3, batch_size=3, format="zarr",
                  prompts=str(prompts), guidance_scale=3.0, sampler=gen_cfg(cond_teacher, "").sampler.__class__(steps=3))
    generate(cfg, progress=False)
    m = read_manifest(Store(tmp_path / "c"))
    assert m["sampler"]["guidance_scale"] == 3.0 and m["sampler"]["prompts"]["count"] == 4
    assert m["record"]["target_kind"] == "guided eps" and m["embeddings"]["rows"] == 3
    assert verify(str(tmp_path / "c"), deep=True) == []
    emb = read_embeddings(Store(tmp_path / "c"))
    assert emb["prompts"] == ["a seven", "a two", "zero"] and tuple(emb["emb"].shape) == (3, 8, 16)
    teacher = load_teacher(str(cond_teacher))
    want, _ = teacher.encode_prompts(emb["prompts"])
    assert torch.equal(emb["emb"], want)  # computed once per unique prompt, stored exactly (fp32)
    r = CacheReader(str(tmp_path / "c"), expect_fingerprint=teacher.fingerprint)
    rows = {}
    checked = 0
    for shard in r.manifest["shards"]:
        for x, t, target, meta in backend.records(r.store, shard, r.dtype):
            rows[meta["traj"]] = meta["cond"]
            if meta["step"] == 1 and checked < 2:  # the target is the guided teacher output at (x_t, t, prompt)
                c = emb["emb"][meta["cond"]][None]
                u, k = teacher(x[None], t, emb["uncond"][None]), teacher(x[None], t, c)
                assert (u + 3.0 * (k - u) - target).abs().max() < 3e-2
                assert (k - target).abs().max() > 1e-3  # guidance changed the target
                checked += 1
    # trajectory i uses prompt i mod 4: a seven, a two, a seven, zero, a seven, a two
    assert rows == {0: 0, 1: 1, 2: 0, 3: 2, 4: 0, 5: 1} and checked == 2


def test_conditional_teacher_needs_prompts(cond_teacher, tiny_teacher, tmp_path):
    with pytest.raises(DkdmError, match="--prompts"):
        generate(gen_cfg(cond_teacher, tmp_path / "c"), progress=False)
    p = tmp_path / "p.txt"
    p.write_text("a seven\n")
    with pytest.raises(DkdmError, match="unconditional"):
        generate(gen_cfg(tiny_teacher, tmp_path / "d", prompts=str(p)), progress=False)
    other = save_tiny_conditional_teacher(tmp_path / "other", seed=1)
    assert load_teacher(str(other)).fingerprint != load_teacher(str(cond_teacher)).fingerprint
    assert np.isfinite(load_teacher(str(cond_teacher)).encode_prompts(["a"])[0].numpy()).all()


def test_distill_a_text_conditioned_student_from_its_cache(cond_teacher, tmp_path):
    from diffusers import UNet2DConditionModel

    from dkdm.config import DistillConfig, SamplerConfig, UNetSpec
    from dkdm.distill.loop import distill

    prompts = tmp_path / "p.txt"
    prompts.write_text("a seven\na two\nzero\n")
    cache = tmp_path / "c"
    generate(gen_cfg(cond_teacher, cache, trajectories=6, shard_size=3, batch_size=3, prompts=str(prompts),
                     guidance_scale=2.0, sampler=SamplerConfig(steps=3)), progress=False)
    r = CacheReader(str(cache))
    cond_of = {}
    for shard in r.manifest["shards"]:
        for b in r.blocks(shard):
            for i in range(len(b)):
                cond_of[b.x_t[i].tobytes()] = int(b.cond[i])
    n = 0
    for x, t, target, cond in r.loader(4, shuffle_buffer=8, epochs=1):
        for xi, ci in zip(x, cond):  # the shuffled loader keeps each record with its own prompt row
            assert cond_of[xi.half().numpy().tobytes()] == int(ci)
            n += 1
    assert n == 16 and sorted(set(cond_of.values())) == [0, 1, 2]

    seen = []
    student = UNetSpec(block_out_channels=(8, 8), attention_levels=(0,), norm_num_groups=4, attention_head_dim=4)
    base = dict(out=str(tmp_path / "run"), student=student, steps=4, batch_size=4, shuffle_buffer=8, num_workers=0,
                device="cpu", log_every=1)
    distill(DistillConfig(cache=str(cache), **base), progress=False,
            on_step=lambda step, micro, acc, s: seen.append(micro[0].cond.clone()))
    emb = read_embeddings(Store(cache))["emb"]
    assert len(seen) == 4
    for c in seen:
        assert c.shape == (4, 8, 16) and all(any(torch.equal(ci, e) for e in emb) for ci in c)
    u = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "student" / "unet")
    assert u.config.cross_attention_dim == 16 and u.config.sample_size == 8
    assert (tmp_path / "run" / "student_samples.png").stat().st_size > 0
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a = u(x, 10, encoder_hidden_states=emb[[0, 0]]).sample
        b = u(x, 10, encoder_hidden_states=emb[[1, 1]]).sample
    assert not torch.allclose(a, b)  # the prompt reaches the student
    with pytest.raises(DkdmError, match="from its cache only"):
        distill(DistillConfig(teacher=str(cond_teacher), source="live", **{**base, "out": str(tmp_path / "live")}),
                progress=False)
