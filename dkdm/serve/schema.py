"""Limits, and the one place a request body becomes a validated GenerateRequest (or a 4xx naming the field)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import DkdmError
from ..schedulers import KINDS


@dataclass(frozen=True)
class Limits:
    max_steps: int = 100  # sampler steps per request
    max_images: int = 16  # images per request (n)
    max_body_bytes: int = 16_384  # request body
    max_queue: int = 64  # images waiting to be computed; more gets 429
    max_batch: int = 16  # images per forward batch (1 = no batching across requests)
    max_wait_ms: float = 10.0  # how long a batch may wait for the previous batch's clients to come back
    timeout_s: float = 60.0  # a request still waiting after this gets 503
    max_prompt_chars: int = 500
    exact: bool = False  # pad every batch to max_batch: batched images bit-identical to single requests


class BadRequest(Exception):
    """A client error: HTTP status, the offending field, a message."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    seed: int
    n: int
    steps: int
    scheduler: str
    eta: float
    guidance: float
    prompt: str | None

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.n))

    @property
    def batch_key(self) -> tuple:
        """Requests with the same key can share a forward batch (prompts differ per image, so they are not in it)."""
        return (self.model, self.steps, self.scheduler, self.eta, self.guidance)


FIELDS = {"model", "prompt", "seed", "steps", "scheduler", "guidance", "eta", "n", "format"}


def _int(body, name, default, lo, hi):
    v = body.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(422, name, f"{name} must be an integer, got {json.dumps(v)}")
    if not lo <= v <= hi:
        raise BadRequest(422, name, f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _float(body, name, default, lo, hi):
    v = body.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise BadRequest(422, name, f"{name} must be a number, got {json.dumps(v)}")
    if not lo <= v <= hi:
        raise BadRequest(422, name, f"{name} must be in [{lo}, {hi}], got {v}")
    return float(v)


def parse(raw: bytes, models: dict, limits: Limits) -> tuple[GenerateRequest, str]:
    """(request, response format 'json' | 'png'); raises BadRequest."""
    if len(raw) > limits.max_body_bytes:
        raise BadRequest(413, None, f"body is {len(raw)} bytes; the limit is {limits.max_body_bytes}")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, None, f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        raise BadRequest(400, None, "body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(422, unknown[0], f"unknown field {unknown[0]!r}; fields are {sorted(FIELDS)}")
    name = body.get("model", next(iter(models)) if len(models) == 1 else None)
    if name is None:
        raise BadRequest(422, "model", f"model is required; one of {list(models)}")
    if name not in models:
        raise BadRequest(404, "model", f"no model {json.dumps(name)}; served: {list(models)}")
    m = models[name]
    prompt = body.get("prompt")
    if m.conditional:
        if not isinstance(prompt, str):
            raise BadRequest(422, "prompt", f"model {name} is text-conditioned: prompt (a string) is required")
        if len(prompt) > limits.max_prompt_chars:
            raise BadRequest(422, "prompt", f"prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    elif prompt not in (None, ""):
        raise BadRequest(422, "prompt", f"model {name} is unconditional; it takes no prompt")
    scheduler = body.get("scheduler", m.sampling["scheduler"])  # the model's own (a few-step student's card)
    if scheduler not in KINDS:
        raise BadRequest(422, "scheduler", f"scheduler must be one of {sorted(KINDS)}, got {json.dumps(scheduler)}")
    fmt = body.get("format", "json")
    if fmt not in ("json", "png"):
        raise BadRequest(422, "format", f"format must be 'json' or 'png', got {json.dumps(fmt)}")
    n = _int(body, "n", 1, 1, limits.max_images)
    if fmt == "png" and n != 1:
        raise BadRequest(422, "format", "format 'png' returns one image: use n = 1 or format 'json'")
    own_g = m.sampling.get("guidance_scale")
    guidance = _float(body, "guidance", own_g if own_g is not None else 3.0 if m.conditional else 1.0, 1.0, 30.0)
    if guidance != 1.0 and not m.conditional:
        raise BadRequest(422, "guidance", f"model {name} is unconditional: guidance must be 1")
    req = GenerateRequest(
        model=name, seed=_int(body, "seed", 0, 0, 2**32 - 1 - n), n=n,
        steps=_int(body, "steps", min(m.sampling["steps"], limits.max_steps), 1, limits.max_steps), scheduler=scheduler,
        eta=_float(body, "eta", 0.0, 0.0, 1.0), guidance=guidance,
        prompt=prompt if m.conditional else None)
    try:  # e.g. an LCM scheduler made for a 4-step walk cannot sample 8 steps: the client's error, not a 500
        m.scheduler(req.scheduler, req.steps)
    except DkdmError as exc:
        raise BadRequest(422, "steps", str(exc)) from None
    return req, fmt
