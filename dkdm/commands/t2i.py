"""`dkdm evaluate-t2i`, and the text-to-image demo behind `dkdm demo --teacher builtin:digits-t2i`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import typer

from .. import config as cfgmod
from ..errors import DkdmError
from .options import EVALUATE_T2I, configured

T2I_RECIPES = {"builtin:digits-t2i": "digits-t2i"}  # demo teachers and the recipe each runs


def _floats(text: Optional[str], what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError as exc:
        raise DkdmError(f"{what} takes numbers separated by commas, got {text!r}") from exc


@configured("evaluate", EVALUATE_T2I)
def evaluate_t2i_cmd(
    cfg,
    recipe_config,
    prompts: Optional[str] = typer.Option(None, help="Prompts file, one per line (default: the recipe's [generate] prompts)."),
    guidance_scale: Optional[float] = typer.Option(None, help="Classifier-free guidance (default: the recipe's [generate])."),
    sweep_guidance: Optional[str] = typer.Option(None, help="Also evaluate at these guidance scales, e.g. 1,2,4."),
    sweep_samples: Optional[int] = typer.Option(None, help="Samples per sweep point."),
    clip: str = typer.Option("", help="CLIP model folder: also report CLIP score."),
    quiet: bool = typer.Option(False),
):
    """Teacher vs student pipelines on the same prompts and seeds: adherence, FID/KID, speed (U-Net and end to end)."""
    from ..evaluate.t2i import evaluate_t2i, render

    r = recipe_config
    prompts = prompts or r.generate.prompts
    if not prompts:
        raise DkdmError("give --prompts FILE (one prompt per line) or a recipe whose [generate] names prompts")
    g = guidance_scale if guidance_scale is not None else r.generate.guidance_scale
    report = evaluate_t2i(cfg, prompts, g, _floats(sweep_guidance, "--sweep-guidance"), sweep_samples, clip, progress=not quiet)
    typer.echo(render(report))
    typer.echo(f"report: {cfg.out}/report.json, {cfg.out}/report.md")


def run_t2i_demo(out: str | Path, recipe: str, progress: bool = True, log=print) -> dict:
    """generate -> distill -> evaluate-t2i on a latent text-to-image teacher, with the recipe's sizes."""
    from ..distill.loop import distill
    from ..evaluate.t2i import evaluate_t2i
    from ..generate import generate
    from ..runtime import atomic_write_json

    out = Path(out)
    r = cfgmod.load_recipe(recipe)
    gen_cfg = dataclasses.replace(r.generate, out=str(out / "cache"), prompts=r.generate.prompts)
    dis_cfg = dataclasses.replace(r.distill, out=str(out), cache=str(out / "cache"), source="cache")
    ev_cfg = dataclasses.replace(r.evaluate, out=str(out), students=[str(out / "student")])
    t0 = time.time()
    log(f"[1/3] generate: {gen_cfg.trajectories} latent trajectories x {gen_cfg.sampler.steps} steps, guidance "
        f"{gen_cfg.guidance_scale} -> {gen_cfg.out}")
    gen = generate(gen_cfg, progress=progress)
    t1 = time.time()
    log(f"[2/3] distill: {dis_cfg.steps} steps of batch {dis_cfg.batch_size} -> {out / 'student'} (a full pipeline)")
    dis = distill(dis_cfg, progress=progress)
    t2 = time.time()
    log(f"[3/3] evaluate-t2i: {ev_cfg.num_samples} samples each, same prompts and seeds")
    report = evaluate_t2i(ev_cfg, gen_cfg.prompts, gen_cfg.guidance_scale, progress=progress)
    t3 = time.time()
    report["demo"] = {"timings": {"generate_s": t1 - t0, "distill_s": t2 - t1, "evaluate_s": t3 - t2, "total_s": t3 - t0},
                      "generate": gen, "distill": dis, "recipe": recipe}
    atomic_write_json(out / "report.json", report)
    return report


def register(app: typer.Typer, friendly) -> None:
    app.command("evaluate-t2i")(friendly(evaluate_t2i_cmd))
