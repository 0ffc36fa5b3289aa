"""Pre-emption, divergence and forged checkpoints: SIGTERM saves and resumes bit-identically, a second signal
aborts, a NaN loss stops without exporting, damaged checkpoints and students are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from dkdm.distill import checkpoint as ckpt
from dkdm.distill.loop import distill
from dkdm.errors import DkdmError, Interrupted, NonFiniteError
from dkdm.evaluate.models import load_student_unet
from dkdm.generate import generate
from dkdm.teacher import BUILTINS, load_teacher

from conftest import gen_cfg
from test_distill import dcfg

COMMON = dict(teacher="", steps=6, lr=3e-3, warmup_steps=2, ema_decay=0.9, checkpoint_every=0)


def weights(run):
    return load_file(str(run / "student" / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tiny_cache, tmp_path_factory):
    """The uninterrupted run, with checkpoints at steps 2 and 4 to forge."""
    root = tmp_path_factory.mktemp("full")
    distill(dcfg(root, cache=str(tiny_cache), **{**COMMON, "checkpoint_every": 2}), progress=False)
    return root / "run"


def test_sigterm_saves_and_resume_is_bit_identical(tiny_cache, full_run, tmp_path):
    def term_at_3(step, micro, acc, student):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster sends before pre-empting

    cfg = dcfg(tmp_path, cache=str(tiny_cache), **{**COMMON, "checkpoint_every": 2})
    with pytest.raises(Interrupted) as info:
        distill(cfg, progress=False, on_step=term_at_3)
    assert info.value.signum == signal.SIGTERM
    assert [p.name for p in ckpt.checkpoints(cfg.out)][-1] == "step-00000004"
    assert not (tmp_path / "run" / "student").exists()
    res = distill(dcfg(tmp_path, cache=str(tiny_cache), resume="latest", **{**COMMON, "checkpoint_every": 2}), progress=False)
    assert res["start_step"] == 4
    a, b = weights(full_run), weights(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_signal_aborts_at_once(tiny_cache, tmp_path):
    def twice(step, micro, acc, student):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info:
        distill(dcfg(tmp_path, cache=str(tiny_cache), **COMMON), progress=False, on_step=twice)
    assert info.value.signum == signal.SIGINT
    assert ckpt.checkpoints(tmp_path / "run") == []  # aborted inside the step: nothing half-saved
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


def test_nan_loss_stops_keeps_last_good_checkpoint_exports_nothing(tiny_cache, tmp_path):
    def poison(step, micro, acc, student):
        if step == 3:
            with torch.no_grad():
                next(acc.unwrap_model(student).parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteError, match="at step 3: training diverged.*step-00000002"):
        distill(dcfg(tmp_path, cache=str(tiny_cache), **{**COMMON, "checkpoint_every": 2}), progress=False, on_step=poison)
    assert not (tmp_path / "run" / "student").exists()
    good = ckpt.checkpoints(tmp_path / "run")
    assert [p.name for p in good] == ["step-00000002"]
    assert all(torch.isfinite(v).all() for v in load_file(str(good[0] / "model.safetensors")).values())


def test_half_written_checkpoint_is_ignored_and_removed(tiny_cache, full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    shutil.rmtree(run / "student")
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    half = run / "checkpoints" / ".tmp-step-00000005"
    half.mkdir()
    (half / "trainer_state.json").write_text('{"step": 5}')
    res = distill(dcfg(tmp_path, cache=str(tiny_cache), resume="latest", **{**COMMON, "checkpoint_every": 2}), progress=False)
    assert res["start_step"] == 4 and not half.exists()


def forged(full_run, tmp_path, fn):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    shutil.rmtree(run / "student")
    fn(ckpt.checkpoints(run)[-1])
    return run


def _state(folder, **kw):
    p = folder / "trainer_state.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **kw}))


def _nan_ema(folder):
    t = load_file(str(folder / "ema.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in t.items()}, str(folder / "ema.safetensors"))


def _truncate(folder):
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])


def _nan_model(folder):
    t = load_file(str(folder / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in t.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})


class _NotAllowed:
    """Any class outside torch's weights_only allow-list: a pickle that `weights_only=True` refuses."""


def _rng(folder, **kw):
    p = folder / "random_states_0.pkl"
    states = torch.load(p, weights_only=False)
    torch.save({**states, **kw}, p)


def _optimizer(folder, fn):
    p = folder / "optimizer.bin"
    st = torch.load(p, weights_only=True)
    fn(st)
    torch.save(st, p)


def _json(folder, name, fn):
    p = folder / name
    p.write_text(json.dumps(fn(json.loads(p.read_text()))))


def _data(folder, **kw):
    p = folder / "data_cache_0.safetensors"
    save_file({**load_file(str(p)), **kw}, str(p))


@pytest.mark.parametrize("forge,msg", [
    (lambda f: torch.save({"random_state": _NotAllowed()}, f / "random_states_0.pkl"), r"random_states_0.pkl cannot be loaded safely"),
    (lambda f: (f / "random_states_0.pkl").write_bytes(b"not a torch file"), r"random_states_0.pkl cannot be loaded safely"),
    (lambda f: _rng(f, torch_manual_seed=torch.zeros(7, dtype=torch.uint8)), r"random_states_0.pkl holds a torch RNG state of the wrong"),
    (lambda f: _rng(f, random_state=(3, (1, 2), None)), r"random_states_0.pkl holds an RNG state its generator refuses"),
    (lambda f: _optimizer(f, lambda st: st["state"][0].update(exp_avg=torch.zeros(3))), r"optimizer.bin holds exp_avg of parameter 0"),
    (lambda f: _optimizer(f, lambda st: st["param_groups"].append(dict(st["param_groups"][0]))), r"optimizer.bin does not have the structure"),
    (lambda f: _json(f, "lr_scheduler.json", lambda d: {k: "x" for k in d}), r"lr_scheduler.json holds .*, not a"),
    (lambda f: _json(f, "lr_scheduler.json", lambda d: {**d, "__class__": 1}), r"lr_scheduler.json does not have the keys"),
    (lambda f: _json(f, "ema.json", lambda d: {**d, "decay": "0.9"}), r"ema.json holds decay"),
    (lambda f: _data(f, consumed=torch.tensor(10**12)), r"data_cache_0.safetensors says 1000000000000 batches"),
    (lambda f: _data(f, consumed=torch.tensor([1.5, 2.0])), r"data_cache_0.safetensors is not a data position"),
    (lambda f: _state(f, world="1"), "damaged"),

    (lambda f: _state(f, step=-100), "damaged"),
    (lambda f: _state(f, step="4"), "damaged"),
    (lambda f: _state(f, step=10**6), "past --steps"),
    (lambda f: (f / "trainer_state.json").write_bytes(b"\xff\xfe"), "cannot be read"),
    (_truncate, "cannot be loaded"),
    (_nan_ema, "NaN/Inf"),
    (_nan_model, "NaN/Inf weights"),
], ids=["rng-pickle", "rng-garbage", "rng-torch-shape", "rng-python-state", "optimizer-shape", "optimizer-groups",
        "lr-strings", "lr-extra-key", "ema-meta-type", "data-position-huge", "data-position-type", "string-world",
        "negative-step", "string-step", "step-past-end", "not-json", "truncated-safetensors", "nan-ema", "nan-model"])
def test_forged_checkpoints_are_refused(tiny_cache, full_run, tmp_path, forge, msg):
    run = forged(full_run, tmp_path, forge)
    with pytest.raises(DkdmError, match=msg):
        distill(dcfg(tmp_path, cache=str(tiny_cache), resume="latest", **{**COMMON, "checkpoint_every": 2}), progress=False)
    assert not (run / "student").exists()


def test_evaluate_refuses_nan_and_pickled_students(full_run, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(full_run / "student", s)
    f = s / "unet" / "diffusion_pytorch_model.safetensors"
    t = load_file(str(f))
    save_file({k: torch.full_like(v, float("nan")) for k, v in t.items()}, str(f), metadata={"format": "pt"})
    with pytest.raises(NonFiniteError, match="NaN/Inf weights"):
        load_student_unet(str(s))
    f.unlink()
    torch.save(t, s / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(DkdmError, match="pickled"):
        load_student_unet(str(s))
    (s / "unet" / "diffusion_pytorch_model.bin").unlink()
    f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header and no tensors: not a UNet
    with pytest.raises(DkdmError, match="cannot load the model"):
        load_student_unet(str(s))


def test_files_honour_the_umask(full_run, tiny_teacher, tmp_path):
    want = 0o666 & ~_umask()
    files = [p for p in full_run.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {want}, \
        {str(p.relative_to(full_run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    c = tmp_path / "c"
    generate(gen_cfg(tiny_teacher, c, trajectories=4), progress=False)
    shard = c / "shards" / "traj-000000.tar"
    assert stat.S_IMODE(shard.stat().st_mode) == want


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_stale_temp_shard_is_removed_on_rerun(tiny_teacher, tmp_path):
    c = tmp_path / "c"
    generate(gen_cfg(tiny_teacher, c, trajectories=8), progress=False)
    stale = c / "shards" / ".tmp-traj-000001-x1y2.tar"
    stale.write_bytes(b"half a shard from kill -9")
    (c / "shards" / "traj-000001.json").unlink()  # the crashed writer never wrote its sidecar
    res = generate(gen_cfg(tiny_teacher, c, trajectories=8), progress=False)
    assert res["shards_written"] == 1 and not stale.exists()
    assert not list((c / "shards").glob(".tmp-*"))


def test_flat_copy_of_builtin_unet_loads(tmp_path):
    """README's flat model layout: config.json at the root is the model's, not a scheduler config."""
    flat = tmp_path / "flat"
    shutil.copytree(BUILTINS["digits"] / "unet", flat)
    t = load_teacher(str(flat))
    assert t.scheduler_config["num_train_timesteps"] == 1000
    assert t.fingerprint == load_teacher("builtin:digits").fingerprint
