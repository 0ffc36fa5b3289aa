"""A real uvicorn server on a loopback port, in a thread of the test process, and the models it serves."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from dkdm.commands.serve import load_models
from dkdm.config import SamplerConfig, UNetSpec


class LiveServer:
    def __init__(self, app):
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def distilled_student(teacher, cache, out) -> str:
    """A real (tiny, briefly trained) student from `dkdm distill`: its run folder."""
    from dkdm.config import DistillConfig
    from dkdm.distill.loop import distill

    cfg = DistillConfig(out=str(out), teacher=str(teacher), cache=str(cache), steps=6, batch_size=8, shuffle_buffer=64,
                        student=UNetSpec(block_out_channels=(8, 8), attention_levels=(), norm_num_groups=4),
                        num_workers=0, device="cpu", log_every=100, sampler=SamplerConfig(steps=5), tracker="none",
                        checkpoint_every=0)
    distill(cfg, progress=False)
    return str(out)


def tiny_models(teacher, student_run):
    return load_models([f"teacher={teacher}", f"student={student_run}"], "cpu", "fp32", False)
