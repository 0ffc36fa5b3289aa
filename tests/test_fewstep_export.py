"""Few-step students leave dkdm as plain diffusers folders: the scheduler and steps travel with them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from dkdm.config import SamplerConfig
from dkdm.distill.export import export_student, sampling_card
from dkdm.errors import DkdmError
from dkdm.own_sampler import own_sampling, own_scheduler
from dkdm.sampling import sample, unet_fn
from dkdm.schedulers import kind_of, make_scheduler
from dkdm.students import build_unet

from conftest import TINY

LCM_CARD = {"teacher": {"source": "tiny"}, "sampling": {"scheduler": "lcm", "steps": 2, "steps_supported": [1, 2, 4],
                                                         "objective": "consistency"}}


def lcm_sched(orig=5):
    return LCMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                        original_inference_steps=orig)


@pytest.fixture(scope="module")
def lcm_student(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lcm") / "student"
    return export_student(build_unet(TINY).eval(), lcm_sched(), out, LCM_CARD)


def plain_python(code: str) -> str:
    """Run code in a fresh interpreter that never imports dkdm (asserted), and return its stdout."""
    guard = "\nimport sys\nassert not any(m == 'dkdm' or m.startswith('dkdm.') for m in sys.modules), 'dkdm imported'\n"
    res = subprocess.run([sys.executable, "-c", code + guard], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_pixel_lcm_student_runs_at_2_steps_in_plain_diffusers(lcm_student):
    """DiffusionPipeline.from_pretrained -> DDPMPipeline + LCMScheduler; at 2 steps its images are dkdm's own."""
    out = plain_python(
        "import json, torch\nfrom diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(lcm_student)!r})\n"
        "img = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(7), output_type='np').images\n"
        "print(json.dumps({'pipe': type(pipe).__name__, 'sched': type(pipe.scheduler).__name__,"
        " 't': pipe.scheduler.timesteps.tolist(), 'img': img[0, :, :, 0].tolist()}))")
    got = json.loads(out.strip().splitlines()[-1])
    assert (got["pipe"], got["sched"], got["t"]) == ("DDPMPipeline", "LCMScheduler", [999, 599])
    unet = build_unet(TINY)
    unet.load_state_dict(_weights(lcm_student))
    mine = sample(unet_fn(unet.eval()), own_scheduler(lcm_student, 2), [7], (1, 16, 16))
    np.testing.assert_allclose(np.asarray(got["img"]), (mine[0, 0].numpy() / 2 + 0.5), atol=1e-5)
    card = json.loads((lcm_student / "dkdm_student.json").read_text())
    assert card["sampling"] == {"scheduler": "lcm", "steps": 2, "steps_supported": [1, 2, 4], "objective": "consistency"}
    assert "num_inference_steps=2" in (lcm_student / "README.md").read_text()


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_exported_scheduler_round_trips_through_plain_diffusers(lcm_student):
    """The saved config rebuilds the same scheduler: same class, original steps, and timesteps at 1/2/4 steps."""
    out = plain_python(
        "import json\nfrom diffusers import LCMScheduler\n"
        f"s = LCMScheduler.from_pretrained({str(lcm_student / 'scheduler')!r})\n"
        "res = {}\nfor n in (1, 2, 4):\n    s.set_timesteps(n); res[n] = s.timesteps.tolist()\n"
        "print(json.dumps({'orig': s.config.original_inference_steps, 'beta': s.config.beta_schedule, 't': res}))")
    got = json.loads(out.strip().splitlines()[-1])
    ref = lcm_sched()
    want = {}
    for n in (1, 2, 4):
        ref.set_timesteps(n)
        want[str(n)] = ref.timesteps.tolist()
    assert got == {"orig": 5, "beta": "squaredcos_cap_v2", "t": want}
    assert want["2"] == [999, 599] and want["1"] == [999]
    for n in (1, 2, 4):  # dkdm's own reading of the folder gives the same grid
        assert own_scheduler(lcm_student, n).timesteps.tolist() == want[str(n)]
    assert own_sampling(lcm_student)["steps_supported"] == [1, 2, 4]
    with pytest.raises(DkdmError, match="at most 5 steps"):
        own_scheduler(lcm_student, 8)


def test_lcm_kind_samples_batch_independently(tiny_teacher):
    """LCM re-noises between steps: the noise must come from each seed's generator, not the global RNG."""
    from dkdm.teacher import load_teacher

    t = load_teacher(str(tiny_teacher))
    sched = make_scheduler(SamplerConfig(scheduler="lcm", steps=4), t.scheduler_config)
    assert kind_of(sched) == "lcm" and sched.config.original_inference_steps == 50
    fn = unet_fn(t.unet)
    torch.manual_seed(1)
    whole = sample(fn, sched, [3, 4, 5, 6], (1, 16, 16))
    torch.manual_seed(2)
    parts = torch.cat([sample(fn, sched, [3, 4], (1, 16, 16)), sample(fn, sched, [5, 6], (1, 16, 16))])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-6)
    assert make_scheduler(SamplerConfig(scheduler="lcm", steps=80), t.scheduler_config).config.original_inference_steps == 80


def test_sampling_card_defaults_for_eps_students():
    ddim = DDIMScheduler(num_train_timesteps=1000)
    ddim.set_timesteps(5)
    grid = sampling_card(ddim, {"sampler": {"coverage": "grid"}})["sampling"]
    assert grid == {"scheduler": "ddim", "steps": 5, "steps_supported": [5], "objective": "eps"}
    offsets = sampling_card(ddim, {"sampler": {"coverage": "offsets"}})["sampling"]
    assert offsets["steps"] == 25  # learned every timestep: sampled like the teacher, not at the walk's 5
    kept = sampling_card(ddim, {"sampling": {"scheduler": "ddim", "steps": 5, "prediction_type": "v_prediction"}})
    assert kept["sampling"]["prediction_type"] == "v_prediction"  # an objective's extra keys survive the export
    with pytest.raises(DkdmError, match="exported scheduler is DDIMScheduler"):
        sampling_card(ddim, {"sampling": {"scheduler": "lcm", "steps": 2}})


@pytest.mark.parametrize("sampling", [{"scheduler": "lcm", "steps": "2", "steps_supported": [2]},
                                      {"scheduler": "magic", "steps": 2, "steps_supported": [2]},
                                      {"scheduler": "lcm", "steps": 2, "steps_supported": [10**9]},
                                      "lcm"])
def test_forged_sampling_card_is_one_clear_error(lcm_student, tmp_path, sampling):
    import shutil

    folder = tmp_path / "s"
    shutil.copytree(lcm_student, folder)
    (folder / "dkdm_student.json").write_text(json.dumps({"sampling": sampling}))
    with pytest.raises(DkdmError, match="'sampling' must name a scheduler"):
        own_sampling(folder)
    (folder / "dkdm_student.json").write_text("{not json")
    with pytest.raises(DkdmError, match="not valid JSON"):
        own_sampling(folder)


def test_forged_scheduler_config_is_refused_before_allocating(lcm_student, tmp_path):
    import shutil

    folder = tmp_path / "s"
    shutil.copytree(lcm_student, folder)
    f = folder / "scheduler" / "scheduler_config.json"
    good = json.loads(f.read_text())
    for bad, msg in (({"num_train_timesteps": 10**12}, "num_train_timesteps"), ({"num_train_timesteps": "x"}, "positive integer"),
                     ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "not one dkdm samples with")):
        f.write_text(json.dumps({**good, **bad}))
        with pytest.raises(DkdmError, match=msg):
            own_scheduler(folder, 2)
