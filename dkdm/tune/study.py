"""The seeded optuna search (NSGA-II with constraints), stored in SQLite next to the report so a rerun continues it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..config import TuneConfig, to_dict
from ..errors import DkdmError
from ..progress import progress_bar
from ..runtime import pick_device, positive
from .energy import open_meter
from .objectives import Evaluator, TrialFailed, load_models, read_subjects
from .space import Setting, check_space, default_params, suggest, takes_eta

DIRECTIONS = {"fid": "minimize", "adherence": "maximize", "cost": "minimize", "bias": "minimize"}
STUDY_NAME = "dkdm-tune"
# what a stored study was made with: a rerun that changes any of these is a different search, not a continuation
SPACE_KEYS = ("teacher", "students", "population", "seed", "sample_seed", "num_samples", "bias_samples", "schedulers",
              "steps", "eta_max", "guidance_min", "guidance_max", "prompts", "prompt_templates", "neutral_prompts",
              "default", "default_guidance", "quality_factor", "adherence_drop", "reference")


def check_config(cfg: TuneConfig) -> None:
    positive("tune.trials", cfg.trials)
    positive("tune.num_samples", cfg.num_samples)
    positive("tune.batch_size", cfg.batch_size)
    positive("tune.bias_samples", cfg.bias_samples)
    if cfg.num_samples < 2:
        raise DkdmError("tune.num_samples must be at least 2 (FID needs a covariance)")
    if cfg.population < 2:
        raise DkdmError(f"tune.population must be at least 2 (NSGA-II crosses two parents), got {cfg.population}")
    if cfg.quality_factor < 1:
        raise DkdmError(f"tune.quality_factor must be >= 1 (1 = no worse than the default), got {cfg.quality_factor}")
    if not 0 <= cfg.adherence_drop <= 1:
        raise DkdmError(f"tune.adherence_drop must lie in [0, 1], got {cfg.adherence_drop}")


def space_id(cfg: TuneConfig, objectives: list[str], cost_unit: str) -> str:
    d = to_dict(cfg)
    key = {k: d[k] for k in SPACE_KEYS} | {"objectives": objectives, "cost_unit": cost_unit}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def constraints(m: dict, default: dict, cfg: TuneConfig) -> list[float]:
    """<= 0 is feasible: FID within quality_factor of the default's; adherence at most adherence_drop below it."""
    c = [m["fid"] - cfg.quality_factor * default["fid"]]
    if m.get("adherence") is not None and default.get("adherence") is not None:
        c.append(default["adherence"] - cfg.adherence_drop - m["adherence"])
    return c


def open_study(cfg: TuneConfig, out: Path, objectives: list[str], sid: str):
    try:
        import optuna
    except ImportError as exc:
        raise DkdmError("dkdm tune needs optuna: pip install 'dkdm[tune]' (or optuna>=5)") from exc

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=cfg.seed)  # reseeded below
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=[DIRECTIONS[o] for o in objectives])
    have = study.user_attrs.get("space_id")
    if have is None:
        study.set_user_attr("space_id", sid)
        study.set_user_attr("objectives", objectives)
    elif have != sid:
        raise DkdmError(f"{out / 'tune.db'} holds a search with other settings (space {have}, now {sid}): "
                        "use another --out, or delete tune.db to start over")
    _fail_interrupted(study)
    n = len(study.trials)
    # a resumed run must not replay the first run's random draws (the sampler's RNG restarts with the process):
    # a fresh study uses the seed itself (same seed, same trials), a continued one a seed derived from its length
    seed = cfg.seed if n == 0 else int(hashlib.sha256(f"{cfg.seed}:{n}".encode()).hexdigest()[:8], 16)
    study.sampler = optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=seed)  # reads trial.set_constraint
    return study


def _fail_interrupted(study) -> None:
    """A trial left RUNNING by a killed process will never finish: record it as failed (one process per study)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (the process stopped mid-trial)")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def enqueue_defaults(study, cfg: TuneConfig, models: list[str], conditional: bool) -> None:
    """Every model's default setting is a trial (teacher first: the constraints' reference), once per study."""
    from optuna.trial import TrialState

    live = [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.WAITING) or t.state == TrialState.FAIL and t.user_attrs.get("model_default")
            and "interrupted" not in t.user_attrs.get("error", "")]
    have = {t.user_attrs.get("model_default") or ("teacher" if t.user_attrs.get("default") else None) for t in live}
    for name in models:
        if name not in have:
            study.enqueue_trial(default_params(cfg, models, conditional, name),
                                user_attrs={"default": name == "teacher", "model_default": name})


def default_setting(cfg: TuneConfig, conditional: bool) -> Setting:
    d = cfg.default
    return Setting(model="teacher", scheduler=d.scheduler, steps=d.steps, eta=d.eta if takes_eta(d.scheduler) else None,
                   guidance=cfg.default_guidance if conditional else None,
                   template=cfg.prompt_templates[0] if conditional else None)


def run_tune(cfg: TuneConfig, progress: bool = True, log=print) -> dict:
    """Run (or continue) the search up to cfg.trials finished trials; write tune.json, tune.md, PNGs, snippets."""
    from .report import trial_line, write_report

    check_config(cfg)
    check_space(cfg, conditional=False)  # what can be refused before any model is loaded
    default_params(cfg, ["teacher"], conditional=False)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(cfg, device)
    conditional = models["teacher"].conditional
    check_space(cfg, conditional)
    meter, energy_why = open_meter(cfg.energy, device)
    ev = Evaluator(cfg, models, meter, device, read_subjects(cfg.prompts) if conditional else None)
    default = default_setting(cfg, conditional)
    ref_name = ev.prepare_reference(default, progress=False)
    graded = ev.classifier is not None  # adherence and bias need a classifier for the images
    objectives = ["fid"] + (["adherence"] if graded else []) + ["cost"] + (["bias"] if graded else [])
    cost_unit = "joules_per_image" if meter else "seconds_per_image"
    study = open_study(cfg, out, objectives, space_id(cfg, objectives, cost_unit))
    enqueue_defaults(study, cfg, list(models), conditional)
    from optuna.trial import TrialState

    todo = max(0, cfg.trials - len(finished(study)))
    bar = progress_bar(todo, "tune", disable=not progress, unit="trial")
    echo = tqdm.write if progress else log  # a line per trial above the bar

    def objective(trial):
        s = suggest(trial, cfg, list(models), conditional)
        trial.set_user_attr("setting", s.to_dict())
        t0 = time.time()
        try:
            m = ev.measure(s)
        except TrialFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            trial.set_user_attr("wall_s", time.time() - t0)
        trial.set_user_attr("metrics", m)
        if trial.user_attrs.get("default"):
            study.set_user_attr("default", {**m, "trial": trial.number, "setting": s.to_dict()})
        base = study.user_attrs.get("default")
        if base is None:
            raise DkdmError("the default setting has not been measured; delete tune.db and start again")
        c = constraints(m, base, cfg)
        trial.set_user_attr("constraints", c)
        for name, v in zip(("fid", "adherence"), c):
            trial.set_constraint(name, v)
        values = {"fid": m["fid"], "adherence": m.get("adherence"), "cost": m[cost_unit], "bias": m.get("bias")}
        return tuple(values[o] for o in objectives)

    def after(study, frozen):
        echo(trial_line(frozen, len(finished(study)), cfg.trials, cost_unit))
        bar.update(1)
        if frozen.user_attrs.get("default") and frozen.state != TrialState.COMPLETE:
            raise DkdmError(f"the default setting failed ({frozen.user_attrs.get('error', 'see above')}); "
                            "nothing can be compared with it: fix tune.default")

    try:
        if todo:
            study.optimize(objective, n_trials=todo, catch=(TrialFailed,), callbacks=[after], gc_after_trial=False)
    finally:
        bar.close()
    confirmed = confirm(study, ev, cfg, objectives, cost_unit, conditional) if cfg.confirm_rounds > 0 else None
    meta = {"confirmed": confirmed, "reference": ref_name, "device": str(device), "objectives": objectives, "cost_unit": cost_unit,
            "energy": {"available": meter is not None, "meter": getattr(meter, "name", None), "unavailable_because": energy_why},
            "config": to_dict(dataclasses.replace(cfg)), "models": {n: m.describe() for n, m in models.items()}}
    return write_report(study, cfg, meta, out)


def confirm(study, ev: Evaluator, cfg: TuneConfig, objectives: list[str], cost_unit: str, conditional: bool) -> dict | None:
    """Re-time the default and every setting the report names against it, in turns (Evaluator.retime)."""
    from .report import picked_trials, trial_rows

    rows = trial_rows(study, cost_unit)
    picks = picked_trials(rows, cfg, objectives)
    if len(picks) < 2:
        return None
    by = {r["number"]: r for r in rows}
    settings = {str(n): Setting(**by[n]["setting"]) for n in picks}
    out = ev.retime(settings, cfg.confirm_rounds)
    d = str(picks[0])
    for k, v in out.items():
        v["ratio_to_default"] = [a / b for a, b in zip(v["rounds"]["seconds_per_image"], out[d]["rounds"]["seconds_per_image"])]
    return {"default_trial": picks[0], "rounds": cfg.confirm_rounds, "trials": out}
