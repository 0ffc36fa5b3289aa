"""`dkdm serve` over real HTTP on loopback: endpoints, seeds, batching, limits, errors as JSON, metrics."""

import base64
import dataclasses
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from dkdm.commands.serve import load_models
from dkdm.evaluate.sweep import scheduler_for
from dkdm.imaging import to_uint8
from dkdm.sampling import sample_many, unet_fn
from dkdm.serve.app import build_app
from dkdm.serve.schema import Limits
from dkdm.teacher import load_teacher

from conftest import run_cli
from serve_helpers import LiveServer, distilled_student, tiny_models

LIMITS = Limits(max_steps=10, max_images=4, max_body_bytes=1024, max_queue=8, max_batch=4, max_wait_ms=50, timeout_s=30)


@pytest.fixture(scope="module")
def student_run(tiny_teacher, tiny_cache, tmp_path_factory):
    return distilled_student(tiny_teacher, tiny_cache, tmp_path_factory.mktemp("student") / "run")


@pytest.fixture(scope="module")
def models(tiny_teacher, student_run):
    return tiny_models(tiny_teacher, student_run)


@pytest.fixture(scope="module")
def server(models):
    with LiveServer(build_app(models, LIMITS)) as s:
        yield s


def pngs(resp) -> list[np.ndarray]:
    assert resp.status_code == 200, resp.text
    return [np.array(Image.open(io.BytesIO(base64.b64decode(b)))) for b in resp.json()["images"]]


def post(server, **body):
    return httpx.post(server.url + "/v1/generate", json=body, timeout=60)


def reference(source, seeds, steps=5, batch_size=1):
    """What `dkdm evaluate` samples for these seeds (its sampler, its scheduler choice), as uint8 images."""
    from dkdm.evaluate.models import load_student_unet

    unet = load_teacher(source).unet if "student" not in str(source) else load_student_unet(source)
    sched_cfg = load_teacher(source if "student" not in str(source) else source + "/student").scheduler_config
    sched, _ = scheduler_for("ddim", steps, "trailing", sched_cfg)
    x = sample_many(unet_fn(unet), sched, seeds, (1, 16, 16), batch_size)
    return [a[..., 0] for a in to_uint8(x)]


def test_endpoints(server):
    h = httpx.get(server.url + "/healthz").json()
    assert h["status"] == "ok" and h["models"] == ["teacher", "student"]
    ms = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert ms["teacher"]["image_shape"] == [1, 16, 16] and ms["student"]["params"] < ms["teacher"]["params"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="generate"' in page.text
    r = post(server, model="student", seed=3, n=3, steps=4)
    imgs = pngs(r)
    assert len(imgs) == 3 and all(i.shape == (16, 16) and i.dtype == np.uint8 for i in imgs)
    assert r.json()["seeds"] == [3, 4, 5] and r.json()["timing"]["total_ms"] > 0
    one = httpx.post(server.url + "/v1/generate", json={"model": "teacher", "seed": 3, "steps": 4, "format": "png"})
    assert one.headers["content-type"] == "image/png" and np.array(Image.open(io.BytesIO(one.content))).shape == (16, 16)
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("dkdm_requests_total", "dkdm_images_total", "dkdm_queue_images", "dkdm_batch_images_bucket",
                 "dkdm_request_seconds_bucket", "dkdm_images_per_second"):
        assert name in metrics, name
    assert 'dkdm_images_total{model="student"}' in metrics


def test_seeds_reproduce_and_match_evaluate_sampler(server, tiny_teacher, student_run):
    a, b = pngs(post(server, model="teacher", seed=11, steps=5)), pngs(post(server, model="teacher", seed=11, steps=5))
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], pngs(post(server, model="teacher", seed=12, steps=5))[0])
    # bit-identical to evaluate's sampler at the same batch size (1 here: a lone request)
    assert np.array_equal(a[0], reference(str(tiny_teacher), [11])[0])
    s = pngs(post(server, model="student", seed=11, steps=5))
    assert np.array_equal(s[0], reference(student_run, [11])[0])


def concurrent(server, bodies):
    with ThreadPoolExecutor(len(bodies)) as ex:
        return list(ex.map(lambda b: httpx.post(server.url + "/v1/generate", json=b, timeout=60), bodies))


def test_concurrent_requests_share_batches(server, tiny_teacher):
    before = server.app.state.batcher.batches
    bodies = [{"model": "teacher", "seed": 100 + i, "steps": 5} for i in range(8)]
    rs = concurrent(server, bodies)
    ran = server.app.state.batcher.batches - before
    assert ran < 8, ran  # 8 requests, fewer forward batches
    assert max(r.json()["timing"]["batch_images"] for r in rs) > 1
    # batched images stay within one grey level of evaluate's single-image sampler
    want = reference(str(tiny_teacher), [100 + i for i in range(8)])
    for r, w in zip(rs, want):
        assert np.abs(pngs(r)[0].astype(int) - w.astype(int)).max() <= 1


def test_exact_mode_is_bit_identical_when_batched(models, tiny_teacher):
    with LiveServer(build_app(models, dataclasses.replace(LIMITS, exact=True))) as s:
        rs = concurrent(s, [{"model": "teacher", "seed": 200 + i, "steps": 5} for i in range(4)])
        lone = pngs(post(s, model="teacher", seed=201, steps=5))[0]
    # every forward runs at batch max_batch=4: evaluate with --batch-size 4 gives the same bits
    want = reference(str(tiny_teacher), list(range(200, 204)), batch_size=4)
    assert all(np.array_equal(pngs(r)[0], w) for r, w in zip(rs, want))
    assert np.array_equal(lone, want[1])


@pytest.mark.parametrize("body,status,field", [
    (b"{nope", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "teacher", "colour": "red"}, 422, "colour"),
    ({"model": "nobody"}, 404, "model"),
    ({}, 422, "model"),  # two models served: which one must be said
    ({"model": "teacher", "steps": 11}, 422, "steps"),
    ({"model": "teacher", "steps": "five"}, 422, "steps"),
    ({"model": "teacher", "n": 5}, 422, "n"),
    ({"model": "teacher", "n": 0}, 422, "n"),
    ({"model": "teacher", "seed": -1}, 422, "seed"),
    ({"model": "teacher", "seed": 1.5}, 422, "seed"),
    ({"model": "teacher", "scheduler": "magic"}, 422, "scheduler"),
    ({"model": "teacher", "eta": 2}, 422, "eta"),
    ({"model": "teacher", "guidance": 5}, 422, "guidance"),
    ({"model": "teacher", "prompt": "a cat"}, 422, "prompt"),
    ({"model": "teacher", "n": 2, "format": "png"}, 422, "format"),
    ({"model": "teacher", "prompt": "x" * 2000}, 413, None),
])
def test_bad_requests_are_json_errors_naming_the_field(server, body, status, field):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/v1/generate", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["status"] == status and err["message"]


def test_wrong_route_and_method_are_json(server):
    for r in (httpx.get(server.url + "/v1/generate"), httpx.get(server.url + "/nowhere")):
        assert r.status_code in (404, 405) and r.json()["error"]["status"] == r.status_code
    assert 'code="422"' in httpx.get(server.url + "/metrics").text


class Gate:
    """Holds the compute thread until released: a busy server, deterministically."""

    def __init__(self, batcher):
        self.batcher, self.inner, self.open = batcher, batcher.run_batch, threading.Event()
        self.entered = threading.Event()
        batcher.run_batch = self

    def __call__(self, *a):
        self.entered.set()
        self.open.wait(30)
        return self.inner(*a)


def test_full_queue_429_disconnect_frees_slot_and_timeout_503(models):
    with LiveServer(build_app(models, dataclasses.replace(LIMITS, max_batch=1, timeout_s=1.5))) as s:
        gate = Gate(s.app.state.batcher)
        url = s.url + "/v1/generate"
        with ThreadPoolExecutor(4) as ex:
            busy = ex.submit(httpx.post, url, json={"model": "teacher", "n": 4, "steps": 2}, timeout=30)
            assert gate.entered.wait(10)  # the compute thread is now held; the queue is empty
            # a client that gives up while queued: its 4 images leave the queue
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url, json={"model": "teacher", "n": 4, "steps": 2}, timeout=0.3)
            queued = [ex.submit(httpx.post, url, json={"model": "student", "n": 4, "steps": 2}, timeout=30) for _ in range(2)]
            for _ in range(100):
                if httpx.get(s.url + "/healthz").json()["queue_images"] == 8:
                    break
                threading.Event().wait(0.02)
            assert httpx.get(s.url + "/healthz").json()["queue_images"] == 8  # 4 + 4: the gone client left no trace
            full = httpx.post(url, json={"model": "student", "n": 1, "steps": 2})
            assert full.status_code == 429 and "queue full" in full.json()["error"]["message"]
            late = [q.result() for q in queued]  # still held past timeout_s
            assert [r.status_code for r in late] == [503, 503] and late[0].json()["error"]["status"] == 503
            gate.open.set()
            assert busy.result().status_code == 200
        m = httpx.get(s.url + "/metrics").text
        assert 'code="429"' in m and 'code="503"' in m and 'code="499"' in m


def test_cli_refuses_a_model_it_cannot_load(tmp_path):
    r = run_cli("serve", tmp_path / "missing", "--port", "0", timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr


def save_tiny_sd_pipeline(path):
    """A StableDiffusionPipeline built from configs: CLIP text encoder, conditional U-Net, a VAE (latents 2x smaller)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from test_cache_conditional import save_tiny_conditional_teacher

    parts = save_tiny_conditional_teacher(path.parent / "parts")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel.from_pretrained(parts / "text_encoder"),
                                   tokenizer=CLIPTokenizer.from_pretrained(parts / "tokenizer"),
                                   unet=UNet2DConditionModel.from_pretrained(parts / "unet"),
                                   scheduler=DDPMScheduler.from_pretrained(parts / "scheduler", clip_sample=False, steps_offset=1),
                                   safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def test_text_conditioned_latent_pipeline(tmp_path):
    from dkdm.commands.serve import load_models

    models = load_models([f"t2i={save_tiny_sd_pipeline(tmp_path / 'sd')}"], "cpu", "fp32", False)
    with LiveServer(build_app(models, LIMITS)) as s:
        info = httpx.get(s.url + "/v1/models").json()["models"][0]
        assert info["conditional"] and info["latent"] and info["image_shape"] == [3, 16, 16]
        r = post(s, prompt="a seven", seed=1, n=2, steps=3, guidance=2.0)  # one model: "model" may be left out
        a = pngs(r)
        assert [x.shape for x in a] == [(16, 16, 3)] * 2
        assert np.array_equal(a[0], pngs(post(s, prompt="a seven", seed=1, steps=3, guidance=2.0))[0])
        assert not np.array_equal(a[0], pngs(post(s, prompt="zero", seed=1, steps=3, guidance=2.0))[0])
        bad = post(s, seed=1, steps=3)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "prompt"


def test_bench_compares_at_equal_p95():
    from dkdm.bench.serve import summarize

    def run(model, batching, clients, ips, p95):
        return {"model": model, "batching": batching, "clients": clients, "images_per_s": ips, "p95_ms": p95}

    runs = [run("teacher", "on", 4, 10, 400), run("student", "on", 4, 15, 250), run("student", "on", 16, 30, 390),
            run("student", "on", 64, 50, 900), run("teacher", "off", 4, 5, 800), run("student", "off", 4, 12, 300)]
    s = summarize(runs)["clients_4"]
    assert s["ratio_same_clients"] == 1.5
    assert s["ratio_equal_p95"] == 3.0 and s["student_at_equal_p95"]["clients"] == 16  # 64 clients is over the p95
    assert summarize(runs)["batching_gain"] == {"teacher_clients_4": 2.0, "student_clients_4": 1.25}


def test_cli_serves_on_loopback(tiny_teacher):
    from dkdm.bench.serve import free_port, peak_rss_mb, start_server

    port = free_port()
    proc = start_server([f"t={tiny_teacher}"], port, ["--threads", "1", "--max-steps", "5"])
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz").json()["models"] == ["t"]
        r = httpx.post(base + "/v1/generate", json={"seed": 5, "steps": 5, "format": "png"}, timeout=60)
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        assert httpx.post(base + "/v1/generate", json={"steps": 6}).json()["error"]["field"] == "steps"
        assert 0 < peak_rss_mb(proc.pid) < 2048
    finally:
        proc.terminate()
        proc.wait(10)
    assert "127.0.0.1" in proc.stdout.read()  # loopback unless told otherwise


@pytest.fixture(scope="module")
def lcm_server(tiny_teacher, tmp_path_factory):
    """The teacher, and a few-step student (the teacher's weights exported with an LCM scheduler for a 4-step walk)."""
    from dkdm.config import SamplerConfig
    from dkdm.distill.export import export_student
    from dkdm.schedulers import make_scheduler

    t = load_teacher(str(tiny_teacher))
    lcm = make_scheduler(SamplerConfig(scheduler="lcm", steps=2),
                         {**t.scheduler_config, "_class_name": "LCMScheduler", "original_inference_steps": 4})
    folder = export_student(t.unet, lcm, tmp_path_factory.mktemp("lcm") / "fast" / "student",
                            {"sampling": {"scheduler": "lcm", "steps": 2, "steps_supported": [1, 2, 4],
                                          "objective": "consistency"}})
    models = load_models([f"teacher={tiny_teacher}", f"fast={folder.parent}"], "cpu", "fp32", False)
    with LiveServer(build_app(models, LIMITS)) as s:
        yield s, folder


def test_a_few_step_student_is_served_at_its_own_scheduler_and_steps(lcm_server):
    from dkdm.own_sampler import own_scheduler

    server, folder = lcm_server
    ms = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()["models"]}
    assert ms["fast"]["default"] == {"scheduler": "lcm", "steps": 2, "guidance": None}
    assert ms["fast"]["steps_supported"] == [1, 2, 4] and ms["teacher"]["default"]["scheduler"] == "ddim"
    r = post(server, model="fast", seed=5)
    assert (r.json()["scheduler"], r.json()["steps"]) == ("lcm", 2)
    unet = load_teacher(str(folder)).unet
    want = to_uint8(sample_many(unet_fn(unet), own_scheduler(folder, 2), [5], (1, 16, 16), 1))[0][..., 0]
    assert np.array_equal(pngs(r)[0], want)  # the card's sampler, bit for bit
    assert not np.array_equal(pngs(post(server, model="fast", seed=5, steps=4))[0], want)
    t = post(server, model="teacher", seed=5)
    assert (t.json()["scheduler"], t.json()["steps"]) == ("ddim", LIMITS.max_steps)  # DDIM-25, capped by the limit
    bad = post(server, model="fast", seed=5, steps=8)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "steps" and "at most 4" in bad.json()["error"]["message"]
