"""Students made from the teacher: block removal with inherited weights, presets, a DiT student, feature KD from
the cache with one teacher forward per batch, and the layer scan with its emitted recipe."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from dkdm.config import DistillConfig, SamplerConfig, UNetSpec, load_recipe
from dkdm.distill.loop import distill
from dkdm.errors import DkdmError
from dkdm.evaluate.models import load_student_unet
from dkdm.generate import generate
from dkdm.students import PRESETS, build_student, model_call, removable_parts
from dkdm.students.blocks import build_blocks_student, expand
from dkdm.students.scan import scan
from dkdm.teacher import load_teacher

from conftest import gen_cfg
from test_cache_conditional import save_tiny_conditional_teacher


def conditional_unet(seed=0) -> UNet2DConditionModel:
    """A tiny latent-style text-to-image UNet (SD layout: 2 layers per block, cross-attention in the outer stages)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16),
                                layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)


def _randomise(unet, seed=1):
    """Freshly built diffusers models zero some output layers; random weights make equality checks bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return unet


def _inputs(unet, n=3):
    c = unet.config
    x = torch.randn(n, c.in_channels, c.sample_size, c.sample_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 400, 900][:n])
    cond = torch.randn(n, 6, 16, generator=torch.Generator().manual_seed(1)) if hasattr(c, "cross_attention_dim") else None
    return x, t, cond


@pytest.mark.parametrize("which", ["digits", "conditional"])
def test_nothing_removed_is_the_teacher_bit_for_bit(which):
    teacher = load_teacher("builtin:digits").unet if which == "digits" else _randomise(conditional_unet())
    student, removal = build_blocks_student(teacher, [])
    x, t, c = _inputs(teacher)
    with torch.no_grad():
        assert torch.equal(model_call(student, x, t, c), model_call(teacher, x, t, c))
    assert removal["removed"] == [] and removal["teacher_tensors_kept"] == removal["teacher_tensors"]


@pytest.mark.parametrize("names", [["bk-base"], ["bk-small"], ["bk-tiny"], ["ssd"], ["vega"], ["stage.0.attn", "mid.attn"]])
def test_removal_copies_exactly_the_kept_weights_and_maps_blocks(names):
    teacher = _randomise(conditional_unet())
    student, removal = build_blocks_student(teacher, names)
    tsd, ssd = teacher.state_dict(), student.state_dict()
    assert len(ssd) < len(tsd) and removal["teacher_tensors_kept"] == len(ssd)
    used = set()
    for name, v in ssd.items():
        src = removal["renamed"].get(name, name)
        assert torch.equal(v, tsd[src]), name
        used.add(src)
    assert len(used) == len(ssd)  # no teacher tensor is copied twice
    # the block map names blocks that exist on both sides and whose outputs have the same shape
    x, t, c = _inputs(teacher)
    outs = {}

    def keep(tag, name):
        return lambda _m, _i, o: outs.__setitem__((tag, name), (o[0] if isinstance(o, tuple) else o).shape)

    hooks = [student.get_submodule(s).register_forward_hook(keep("s", s)) for s in removal["blocks"]]
    hooks += [teacher.get_submodule(v).register_forward_hook(keep("t", v)) for v in removal["blocks"].values()]
    with torch.no_grad():
        model_call(student, x, t, c), model_call(teacher, x, t, c)
    for h in hooks:
        h.remove()
    assert removal["blocks"] and all(outs[("s", s)] == outs[("t", v)] for s, v in removal["blocks"].items())


def test_presets_on_the_conditional_teacher_follow_bk_sdm():
    cfg = {**dict(conditional_unet().config), "_class_name": "UNet2DConditionModel"}
    assert expand(["bk-base"], cfg)[0] == ["stage.0.layer", "stage.1.layer", "stage.2.layer"]
    assert expand(["bk-small"], cfg)[0] == ["stage.0.layer", "stage.1.layer", "stage.2.layer", "mid"]
    assert "level.2" in expand(["bk-tiny"], cfg)[0]
    params = {p: sum(v.numel() for v in build_blocks_student(conditional_unet(), [p])[0].parameters()) for p in PRESETS}
    assert params["bk-base"] > params["bk-small"] > params["bk-tiny"]
    with pytest.raises(DkdmError, match="cannot remove"):
        expand(["stage.5.attn"], cfg)
    digits = {**dict(load_teacher("builtin:digits").unet.config), "_class_name": "UNet2DModel"}
    assert removable_parts(digits) == ["mid", "mid.attn", "stage.1.attn", "level.2"]
    with pytest.raises(DkdmError, match="removes nothing"):
        expand(["bk-base"], digits)  # one layer per block: no pair to drop


def test_every_student_trains_two_steps_exports_and_loads_in_plain_diffusers(tmp_path):
    digits = load_teacher("builtin:digits").unet
    cond = conditional_unet()
    made = []
    for teacher, kinds in ((digits, ["bk-small", "bk-tiny", "ssd", "vega", "transformer", "narrow"]),
                           (cond, list(PRESETS))):
        spec = UNetSpec(sample_size=teacher.config.sample_size, in_channels=teacher.config.in_channels,
                        out_channels=teacher.config.in_channels, block_out_channels=(8, 16), attention_levels=(0,),
                        norm_num_groups=4, cross_attention_dim=16 if teacher is cond else None)
        for kind in kinds:
            cfg = DistillConfig(student_kind=kind)
            student, info = build_student(cfg, spec, teacher, dict(teacher.config))
            opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
            x, t, c = _inputs(teacher)
            for _ in range(2):
                loss = model_call(student, x, t, c).pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
            folder = tmp_path / f"{type(teacher).__name__}-{kind}"
            student.save_pretrained(folder)
            with torch.no_grad():
                torch.save({"x": x, "t": t, "c": c, "y": model_call(student.eval(), x, t, c)}, folder / "io.pt")
            made.append((str(folder), type(student).__name__))
    assert {n for _, n in made} == {"UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel"}
    # a Python that never imports dkdm loads every student with the class its config names and gets the same output
    code = ("import json,sys,torch,diffusers\n"
            "for f,n in json.loads(sys.argv[1]):\n"
            "    m=getattr(diffusers,n).from_pretrained(f).eval(); d=torch.load(f+'/io.pt')\n"
            "    kw={'class_labels':torch.zeros(3,dtype=torch.long)} if n.startswith('DiT') else ({'encoder_hidden_states':d['c']} if d['c'] is not None else {})\n"
            "    y=m(d['x'],d['t'],**kw).sample\n"
            "    assert torch.allclose(y,d['y'],atol=1e-5),f\n"
            "    assert 'dkdm' not in sys.modules\n"
            "print('ok',len(json.loads(sys.argv[1])))\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(made)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok 11"), r.stderr[-2000:]


def _dcfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), steps=2, batch_size=8, shuffle_buffer=32, warmup_steps=0, log_every=1,
                checkpoint_every=0, device="cpu", tracker="none", sampler=SamplerConfig(steps=5),
                student=UNetSpec(block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4))
    base.update(kw)
    return DistillConfig(**base)


def test_feature_kd_from_the_cache_uses_one_teacher_forward_per_batch(tiny_cache, tiny_teacher, tmp_path, monkeypatch):
    import dkdm.distill.loop as loop

    real_load, calls = loop.load_teacher, []

    def counting_load(*a, **kw):
        t = real_load(*a, **kw)
        t.unet.register_forward_hook(lambda *_: calls.append(1))
        return t

    monkeypatch.setattr(loop, "load_teacher", counting_load)
    steps = []
    res = distill(_dcfg(tmp_path, teacher=str(tiny_teacher), cache=str(tiny_cache), student_kind="bk-small",
                        feature_kd=0.5, steps=3), progress=False,
                  on_step=lambda step, *_: steps.append(len(calls)))
    assert steps == [1, 2, 3] and res["teacher_forwards"] == 0  # one forward per batch, no pool walked
    log = (tmp_path / "run" / "distill_log.csv").read_text().splitlines()
    head, first = log[0].split(","), log[1].split(",")
    assert float(first[head.index("feature_kd")]) > 0 and float(first[head.index("eps_mse")]) > 0
    card = json.loads((tmp_path / "run" / "student" / "dkdm_student.json").read_text())
    assert card["student"]["kind"] == "blocks" and card["student"]["removed"] == ["mid"]
    assert load_student_unet(str(tmp_path / "run")).config.mid_block_type is None
    with pytest.raises(DkdmError, match="--teacher"):
        distill(_dcfg(tmp_path, cache=str(tiny_cache), feature_kd=1.0), progress=False)


def test_transformer_student_distils_and_samples(tiny_cache, tmp_path):
    from dkdm.sampling import sample, unet_fn

    distill(_dcfg(tmp_path, cache=str(tiny_cache), student_kind="transformer"), progress=False)
    assert (tmp_path / "run" / "student" / "transformer" / "config.json").is_file()
    m = load_student_unet(str(tmp_path / "run"))
    sched = DDPMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(3)
    img = sample(unet_fn(m), sched, [0, 1], (1, 16, 16))
    assert img.shape == (2, 1, 16, 16) and torch.isfinite(img).all()


def test_scan_ranks_parts_and_its_recipe_distils(tiny_cache, tiny_teacher, tmp_path):
    res = scan(str(tiny_teacher), str(tiny_cache), tmp_path / "scan", records=24, batch_size=8, repeats=1,
               budget_params=0.95, device="cpu", progress=False)
    for f in ("scan.json", "scan.md", "scan.png", "recipe.toml"):
        assert (tmp_path / "scan" / f).stat().st_size > 0
    inc = [res["parts"][p]["loss_increase"] for p in res["ranked"]]
    assert set(res["ranked"]) == {"mid", "mid.attn"} and inc == sorted(inc) and inc[-1] > 0
    assert res["budget"]["params_ratio"] <= 0.95
    r = load_recipe(tmp_path / "scan" / "recipe.toml")
    assert r.distill.student_kind == "blocks" and r.distill.student_remove == res["budget"]["removed"]
    import dataclasses

    cfg = dataclasses.replace(r.distill, out=str(tmp_path / "d"), steps=2, batch_size=8, shuffle_buffer=32,
                              checkpoint_every=0, device="cpu", tracker="none", warmup_steps=0)
    distill(cfg, progress=False)
    assert load_student_unet(str(tmp_path / "d")).config.mid_block_type is None
    with pytest.raises(DkdmError, match="budget"):
        scan(str(tiny_teacher), str(tiny_cache), tmp_path / "s2", records=8, batch_size=8, repeats=1, budget_params=0.1,
             device="cpu", progress=False)


def test_scan_on_a_text_conditioned_teacher(tmp_path):
    teacher = save_tiny_conditional_teacher(tmp_path / "t2i")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a seven\na two\n")
    generate(gen_cfg(teacher, tmp_path / "c", trajectories=4, shard_size=2, batch_size=4, prompts=str(prompts),
                     sampler=SamplerConfig(steps=3)), progress=False)
    res = scan(str(teacher), str(tmp_path / "c"), tmp_path / "scan", records=8, batch_size=4, repeats=1, device="cpu",
               budget_params=0.9, progress=False)
    assert set(res["ranked"]) == {"mid", "mid.attn", "stage.0.attn"}
    assert all(res["parts"][p]["params_ratio"] < 1 for p in res["ranked"])
    assert res["teacher_row"]["loss"] < 1e-3  # the teacher reproduces its own cached targets
    # its recipe distils a blocks student of the text-conditioned teacher from the cache, with feature KD on prompt rows
    import dataclasses

    r = load_recipe(tmp_path / "scan" / "recipe.toml").distill
    distill(dataclasses.replace(_dcfg(tmp_path, feature_kd=1.0, batch_size=4), teacher=r.teacher, cache=r.cache,
                                student_kind=r.student_kind, student_remove=r.student_remove), progress=False)
    unet = load_student_unet(str(tmp_path / "run"))
    assert type(unet).__name__ == "UNet2DConditionModel" and count(unet) <= 0.9 * count(load_teacher(str(teacher)).unet)


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_cli_errors_are_one_line(tmp_path):
    from conftest import run_cli

    r = run_cli("students", "scan", "--cache", tmp_path / "nowhere", "--teacher", "builtin:digits")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().startswith("error:")
    assert len(r.stderr.strip().splitlines()) == 1
