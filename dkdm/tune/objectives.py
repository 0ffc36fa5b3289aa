"""What one trial measures: FID against the reference, prompt adherence and class bias (text models), and cost
(joules per image where a counter exists, else seconds per image), with serve's sampler (same seed, same image)."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from ..config import TuneConfig
from ..errors import DkdmError
from ..evaluate.features import extract, load_extractor
from ..evaluate.models import student_name
from ..evaluate.t2i import digit_named
from .bias import bias_of, classify_digits
from .energy import Window
from .space import Setting, apply_template


class TrialFailed(Exception):
    """A setting that produced no usable images (a diverging sampler, non-finite output)."""


def load_models(cfg: TuneConfig, device) -> dict:
    """The teacher as "teacher" and each student under its folder name, through serve's loader."""
    from ..serve.models import load_served

    models = {"teacher": load_served(cfg.teacher, device)}
    for spec in cfg.students:  # [NAME=]FOLDER, as `dkdm serve` takes them
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or student_name(path)
        if name in models:
            raise DkdmError(f"two models are named {name!r}: name them, e.g. student2={path}")
        models[name] = load_served(f"{name}={path}", device)
    first = models["teacher"]
    for n, m in models.items():
        if m.conditional != first.conditional or m.image_shape != first.image_shape:
            raise DkdmError(f"model {n} makes {'text-conditioned ' if m.conditional else ''}{m.image_shape} images, the teacher "
                            f"{'text-conditioned ' if first.conditional else ''}{first.image_shape}: tune compares like with like")
    return models


class Evaluator:
    """Fixed seeds and prompts for every trial, so objectives differ only by the setting."""

    def __init__(self, cfg: TuneConfig, models: dict, meter, device, subjects: list[str] | None = None):
        self.cfg, self.models, self.meter, self.device = cfg, models, meter, device
        self.conditional = next(iter(models.values())).conditional
        self.shape = next(iter(models.values())).image_shape
        n = cfg.num_samples
        self.seeds = list(range(cfg.sample_seed, cfg.sample_seed + n))
        self.bias_seeds = list(range(cfg.sample_seed + n, cfg.sample_seed + n + cfg.bias_samples))
        if self.conditional:
            if not subjects:
                raise DkdmError("a text-conditioned model needs tune.prompts (a file of prompts, one per line)")
            self.subjects = [subjects[i % len(subjects)] for i in range(n)]
            self.labels = [digit_named(s) for s in self.subjects]
            self.neutral = [cfg.neutral_prompts[i % len(cfg.neutral_prompts)] for i in range(cfg.bias_samples)]
            named = [p for p in cfg.neutral_prompts if digit_named(p) is not None]
            if named:
                raise DkdmError(f"neutral prompts must name no digit, but {named} do")
        self.classifier = None
        if self.conditional and self.shape == (1, 16, 16):
            from ..evaluate.digits_features import load_digits_extractor

            self.classifier = load_digits_extractor()
        self.extractor = load_extractor("auto", self.shape, None, device)
        self.reference = None

    def prepare_reference(self, default: Setting, progress: bool = False) -> str:
        """Real images (digits for 1x16x16), else the teacher's default-setting samples at other seeds."""
        from ..evaluate.reference import real_reference, teacher_reference

        spec = self.cfg.reference
        if spec == "auto":
            spec = "digits" if self.shape == (1, 16, 16) else "teacher"
        if spec == "teacher":
            seeds = range(self.cfg.sample_seed + 10**6, self.cfg.sample_seed + 10**6 + self.cfg.num_samples)
            imgs = self._sample(default, list(seeds), self._prompts(default, self.subjects) if self.conditional else None)[0]
            self.reference = teacher_reference(extract(self.extractor, imgs, "reference", progress=False), seeds)
        else:
            self.reference = real_reference(spec, self.extractor, self.shape, self.cfg.cache_root, progress=progress)
        return self.reference.name

    def _prompts(self, s: Setting, subjects: list[str]) -> list[str]:
        return [apply_template(s.template, p) for p in subjects]

    def _sample(self, s: Setting, seeds: list[int], prompts: list[str] | None) -> tuple[torch.Tensor, list[Window]]:
        from ..serve.models import generate

        m = self.models[s.model]
        kw = dict(steps=s.steps, scheduler=s.scheduler, eta=s.eta or 0.0, guidance=s.guidance or 1.0,
                  spacing=self.cfg.default.timestep_spacing)
        out, windows = [], []
        bs = self.cfg.batch_size
        for i in range(0, len(seeds), bs):
            with Window(self.meter, self.device) as w:
                x = generate(m, seeds[i:i + bs], prompts=None if prompts is None else prompts[i:i + bs], **kw)
            if not torch.isfinite(x).all():
                raise TrialFailed(f"non-finite images from {s.label()}: the sampler diverged")
            out.append(x)
            windows.append((w, len(x)))
        return torch.cat(out), windows

    def measure(self, s: Setting) -> dict:
        """Every objective of one setting; raises TrialFailed when the setting makes no usable images."""
        from ..serve.models import generate

        m = self.models[s.model]
        try:  # warm-up outside the timed windows: first-call allocations, scheduler construction
            generate(m, self.seeds[:2], s.steps, s.scheduler, s.eta or 0.0, s.guidance or 1.0,
                     self._prompts(s, self.subjects[:2]) if self.conditional else None, self.cfg.default.timestep_spacing)
            imgs, windows = self._sample(s, self.seeds, self._prompts(s, self.subjects) if self.conditional else None)
            r = {}
            if self.conditional:
                bias_imgs, bw = self._sample(s, self.bias_seeds, self._prompts(s, self.neutral))
                windows += bw
        except (RuntimeError, ValueError, IndexError, ZeroDivisionError) as exc:  # diffusers/torch errors of a bad setting
            raise TrialFailed(f"{s.label()} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        feats = extract(self.extractor, imgs, s.label(), progress=False)
        r["fid"] = float(self.reference.fid(feats))
        if not np.isfinite(r["fid"]):
            raise TrialFailed(f"FID of {s.label()} is not finite")
        if self.conditional and self.classifier is not None:
            pred = classify_digits(imgs, self.classifier)
            ok = [int(p == lab) for p, lab in zip(pred, self.labels) if lab is not None]
            r["adherence"] = float(np.mean(ok)) if ok else None
            r["bias_detail"] = bias_of(classify_digits(bias_imgs, self.classifier))
            r["bias"] = r["bias_detail"]["tv_to_uniform"]
        per_image = [w.seconds / n for w, n in windows]
        r["seconds_per_image"] = float(statistics.median(per_image))
        r["seconds_total"] = float(sum(w.seconds for w, _ in windows))
        r["images"] = int(sum(n for _, n in windows))
        r["joules_per_image"] = None if self.meter is None else float(sum(w.joules for w, _ in windows) / r["images"])
        return r


    def retime(self, settings: dict, rounds: int) -> dict:
        """Seconds (and joules) per image of one quality batch per setting, the settings taking turns in each round:
        trial costs were measured minutes apart on a machine whose load moves; turns put the compared ones under
        the same load."""
        from ..serve.models import generate

        seeds = self.seeds[:self.cfg.batch_size]
        rows = {k: {"seconds_per_image": [], "joules_per_image": []} for k in settings}
        for k, s in settings.items():  # warm-up
            generate(self.models[s.model], seeds[:2], s.steps, s.scheduler, s.eta or 0.0, s.guidance or 1.0,
                     self._prompts(s, self.subjects[:2]) if self.conditional else None, self.cfg.default.timestep_spacing)
        for _ in range(rounds):
            for k, s in settings.items():
                _, windows = self._sample(s, seeds, self._prompts(s, self.subjects[:len(seeds)]) if self.conditional else None)
                n = sum(c for _, c in windows)
                rows[k]["seconds_per_image"].append(sum(w.seconds for w, _ in windows) / n)
                if self.meter is not None:
                    rows[k]["joules_per_image"].append(sum(w.joules for w, _ in windows) / n)
        return {k: {"rounds": v, "median": {u: float(statistics.median(x)) if x else None for u, x in v.items()},
                    "images_per_round": len(seeds)} for k, v in rows.items()}


def read_subjects(path: str) -> list[str]:
    """The prompts file; a recipe's relative path (pipelines/...) is found from any directory."""
    from ..cache.embeddings import read_prompts
    from ..config import PIPELINES_DIR

    if path and not Path(path).exists() and (PIPELINES_DIR.parent / path).is_file():
        path = str(PIPELINES_DIR.parent / path)
    return read_prompts(path) if path else []
