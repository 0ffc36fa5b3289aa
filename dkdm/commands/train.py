"""`dkdm train` and `dkdm train-features`: the models this project trains on real digits."""

from __future__ import annotations

from typing import Optional

import typer

from .options import TRAIN, command


def register(app: typer.Typer, friendly) -> None:
    @command(app, friendly, "train", TRAIN)
    def train(cfg):
        """Train a diffusion model on real images (digits): the embedded teacher and the data baseline."""
        from ..train import train_teacher

        summary = train_teacher(cfg)
        typer.echo(f"saved {cfg.out}  final loss {summary['final_loss']:.4f}  {summary['seconds']:.0f}s")

    @app.command("train-features")
    @friendly
    def train_features(out: Optional[str] = typer.Option(None, help="Folder (default: the builtin one)."),
                       epochs: int = typer.Option(40, min=1), seed: int = 0):
        """Train the digits classifier whose penultimate features serve FID/KID on digits."""
        from ..evaluate.digits_features import BUILTIN, train_digits_classifier

        meta = train_digits_classifier(out or BUILTIN, epochs=epochs, seed=seed)
        typer.echo(f"held-out accuracy {meta['held_out_accuracy']:.4f} on {meta['held_out']} digits")
