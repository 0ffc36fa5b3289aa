"""The `dkdm` command: registers one module per command group (dkdm/commands/), each a thin typer layer over
library functions, all under one error policy (dkdm/commands/errors.py)."""

from __future__ import annotations

import os
import sys

import typer

from .commands import bench, cache, demo, distill, evaluate, generate, serve, students, t2i, train, tune
from .commands.errors import friendly

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Data-free knowledge distillation of diffusion models.")

# A new command group is a module with `register(app, friendly)`, added to this tuple.
COMMANDS = (train, generate, distill, evaluate, demo, cache, bench, t2i, students, serve, tune)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also: DKDM_DEBUG=1).")):
    """Data-free knowledge distillation of diffusion models."""
    if debug:
        os.environ["DKDM_DEBUG"] = "1"


for _module in COMMANDS:
    _module.register(app, friendly)


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
