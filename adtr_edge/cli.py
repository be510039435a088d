"""The ``adtr-edge`` command: the list of areas whose commands it offers.

Every command lives in its area's ``cli`` module, whose ``register(app)`` adds it (the one-module
areas ``demo``, ``finetune`` and ``commands`` register from that module). Each command turns an
``AdtrError`` into one red line and exit code 2 (``commands.run_app``).
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

import typer

from .commands import run_app

app = typer.Typer(
    name="adtr-edge",
    help="ADTR anomaly detection for edge GPUs: train -> export -> build-engine -> stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The areas, in the order ``adtr-edge --help`` lists their commands. Each imports its heavy
# dependencies (torch, tensorrt, onnxruntime) inside its commands, so registering them all keeps
# start-up light.
AREA_MODULES = ("adtr_edge.train.cli", "adtr_edge.export.cli", "adtr_edge.data.cli", "adtr_edge.engine.cli",
                "adtr_edge.runtime.cli", "adtr_edge.demo", "adtr_edge.bench.cli", "adtr_edge.finetune", "adtr_edge.commands")
for _name in AREA_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: Optional[List[str]] = None) -> int:
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
