"""The `exmachina` command: learn, and the tools that look inside a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Neural networks in which every neuron is its own OS process.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def learn(config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/xor.yaml")]) -> None:
    """Train a network: one process per neuron, plus a coordinator, under a supervisor."""
    from exmachina.supervisor import learn as run_learning

    raise typer.Exit(run_learning(config))


def main() -> None:
    app()
