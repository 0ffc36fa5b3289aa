"""The search space: model, scheduler, steps, eta, guidance and prompt template, per model where they differ.

Scheduler kinds come from dkdm.schedulers.KINDS, so a kind added there (e.g. an LCM scheduler for few-step
students) is searched without a change here; `model_options` is where a model narrows its own choices.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import diffusers

from ..config import TuneConfig
from ..errors import DkdmError
from ..schedulers import KINDS

SUBJECT = "{subject}"


@dataclass(frozen=True)
class Setting:
    """One point of the space; eta is None for schedulers whose step takes no eta, guidance/template None for
    unconditional models."""

    model: str
    scheduler: str
    steps: int
    eta: float | None
    guidance: float | None
    template: str | None

    def label(self) -> str:
        parts = [self.model, f"{self.scheduler}-{self.steps}"]
        if self.eta is not None:
            parts.append(f"eta={self.eta:g}")
        if self.guidance is not None:
            parts.append(f"g={self.guidance:g}")
        if self.template is not None:
            parts.append(f"tpl={self.template!r}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def takes_eta(kind: str) -> bool:
    return "eta" in inspect.signature(getattr(diffusers, KINDS[kind]).step).parameters


def apply_template(template: str, subject: str) -> str:
    return template.replace(SUBJECT, subject)


def check_space(cfg: TuneConfig, conditional: bool) -> None:
    """Refuse a space that cannot be searched, with what to change."""
    bad = [s for s in cfg.schedulers if s not in KINDS]
    if bad:
        raise DkdmError(f"unknown scheduler(s) {bad} in tune.schedulers; choose from {sorted(KINDS)}")
    if not cfg.steps or any(not isinstance(s, int) or s <= 0 for s in cfg.steps):
        raise DkdmError(f"tune.steps must be a list of positive integers, got {cfg.steps}")
    if not 0 <= cfg.eta_max <= 1:
        raise DkdmError(f"tune.eta_max must lie in [0, 1], got {cfg.eta_max}")
    if conditional:
        if not 1 <= cfg.guidance_min <= cfg.guidance_max:
            raise DkdmError(f"need 1 <= guidance_min <= guidance_max, got {cfg.guidance_min}, {cfg.guidance_max}")
        if not cfg.prompt_templates or any(t.count(SUBJECT) != 1 for t in cfg.prompt_templates):
            raise DkdmError(f"every prompt template must hold {SUBJECT} exactly once, got {cfg.prompt_templates}")
        if not cfg.neutral_prompts or not all(p.strip() for p in cfg.neutral_prompts):
            raise DkdmError("tune.neutral_prompts must list at least one non-empty prompt (the bias objective)")


def model_options(name: str, cfg: TuneConfig) -> dict:
    """The schedulers and step counts one model is searched over (a few-step student can narrow them here)."""
    return {"schedulers": list(cfg.schedulers or KINDS), "steps": sorted(set(cfg.steps))}


def suggest(trial, cfg: TuneConfig, models: list[str], conditional: bool) -> Setting:
    """Ask an optuna trial for one setting. Parameter names are per model only where the options differ, so
    NSGA-II sees one shared space whenever it can."""
    model = trial.suggest_categorical("model", models) if len(models) > 1 else models[0]
    opts = model_options(model, cfg)
    shared = all(model_options(m, cfg) == opts for m in models)
    tag = "" if shared else f"@{model}"
    kind = trial.suggest_categorical("scheduler" + tag, opts["schedulers"])
    steps = trial.suggest_categorical("steps" + tag, opts["steps"])
    eta = trial.suggest_float("eta", 0.0, cfg.eta_max, step=0.25) if cfg.eta_max > 0 else 0.0
    guidance = template = None
    if conditional:
        guidance = trial.suggest_float("guidance", cfg.guidance_min, cfg.guidance_max, step=0.5) \
            if cfg.guidance_max > cfg.guidance_min else cfg.guidance_min
        template = trial.suggest_categorical("template", list(cfg.prompt_templates))
    return Setting(model=model, scheduler=kind, steps=int(steps), eta=float(eta) if takes_eta(kind) else None,
                   guidance=guidance, template=template)


def default_params(cfg: TuneConfig, models: list[str], conditional: bool, model: str | None = None) -> dict:
    """The default setting as optuna parameters for `model` (default: the teacher, models[0]): tune.default,
    default_guidance, the first template. The teacher's is trial 0, the reference of the constraints."""
    d = cfg.default
    model = model or models[0]
    if d.scheduler not in KINDS:
        raise DkdmError(f"tune.default.scheduler {d.scheduler!r} is not one of {sorted(KINDS)}")
    opts = model_options(model, cfg)
    shared = all(model_options(m, cfg) == opts for m in models)
    tag = "" if shared else f"@{model}"
    if d.scheduler not in opts["schedulers"] or d.steps not in opts["steps"]:
        raise DkdmError(f"the default setting {d.scheduler}-{d.steps} must lie inside the search space "
                        f"(schedulers {opts['schedulers']}, steps {opts['steps']}): add it to tune.schedulers / tune.steps")
    p = {"scheduler" + tag: d.scheduler, "steps" + tag: d.steps}
    if len(models) > 1:
        p["model"] = model
    if cfg.eta_max > 0:
        p["eta"] = min(round(d.eta * 4) / 4, cfg.eta_max)
    if conditional:
        if cfg.guidance_max > cfg.guidance_min:
            if not cfg.guidance_min <= cfg.default_guidance <= cfg.guidance_max:
                raise DkdmError(f"default_guidance {cfg.default_guidance} lies outside [{cfg.guidance_min}, {cfg.guidance_max}]")
            p["guidance"] = cfg.default_guidance
        p["template"] = cfg.prompt_templates[0]
    return p


def label(s: dict) -> str:
    """A setting (a trial's params or a report row) in one short line."""
    parts = [s["model"], f"{s['scheduler']}-{s['steps']}"]
    if s.get("eta") is not None:
        parts.append(f"eta={s['eta']:g}")
    if s.get("guidance") is not None:
        parts.append(f"g={s['guidance']:g}")
    if s.get("template") is not None:
        parts.append(f"tpl={s['template']!r}")
    return " ".join(parts)
