"""The `exmachina` command: learn, and the tools that look inside a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Neural networks in which every neuron is its own OS process.",
    no_args_is_help=True,
    add_completion=False,
    # click's own help: typer's rich panels print a <bool> placeholder after every flag, --help too
    rich_markup_mode=None,
)


@app.command()
def learn(
    config: Annotated[Path | None, typer.Argument(help="YAML config, e.g. configs/xor.yaml")] = None,
    config_option: Annotated[
        Path | None, typer.Option("--config", "-c", help="the config, given as an option", show_default=False)
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="continue a stopped or crashed run (path or name)")
    ] = None,
) -> None:
    """Train a network: one process per neuron, plus a coordinator, under a supervisor."""
    from exmachina.launch.learn import main as run_main

    if config is not None and config_option is not None and config != config_option:
        print("exmachina: give the config once: as an argument or as --config", file=sys.stderr)
        raise typer.Exit(2)
    run_main(config or config_option, resume)


RUN_HELP = "a run directory, or a run's name under runs/ (default: runs/latest)"
RunArg = Annotated[str | None, typer.Argument(help=RUN_HELP, show_default=False)]


@app.command()
def view(
    run: RunArg = None,
    port: Annotated[int, typer.Option(help="port to serve on (0: any free port)")] = 8050,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
) -> None:
    """Watch a run learn in the browser: each hidden neuron's weights as a picture, the latest
    predictions, loss and accuracy curves. Live while it trains; works on a finished run too."""
    from exmachina.tools.viewer import main as run_viewer

    raise typer.Exit(run_viewer(run, host, port))


@app.command()
def report(run: RunArg = None) -> None:
    """Draw a run's weights, latest predictions and curves into PNG files in its directory."""
    from exmachina.tools.report import main as run_report

    raise typer.Exit(run_report(run))


# -- using what a run learnt: predict, evaluate (exmachina/tools/predict.py) ---------------------------

MODEL_HELP = "a run directory, a run's name under runs/, latest (the default) or a model.npz file"
ModelArg = Annotated[str | None, typer.Argument(help=MODEL_HELP, show_default=False)]


def _using(job) -> None:
    """Run one model command: a bad run, file or width is one line on stderr and exit 2."""
    from exmachina.config import ConfigError
    from exmachina.data.datasets import DatasetError
    from exmachina.model.trained import ModelError

    try:
        code = job()
    except (ModelError, DatasetError, ConfigError) as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        code = 2
    raise typer.Exit(code)


@app.command()
def predict(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="rows of inputs (targets after them are scored)")
    ],
    run: ModelArg = None,
    json_list: Annotated[bool, typer.Option("--json", help="one JSON list of every row's outputs")] = False,
    classes: Annotated[
        bool, typer.Option("--classes", help="the class of each row instead of its outputs")
    ] = False,
) -> None:
    """A run's model on a file's rows, in this process: one line of comma-separated outputs per row.
    Rows that also carry targets get their accuracy printed on stderr."""
    from exmachina.tools import predict as tool

    _using(lambda: tool.predict(run, data, json_list, classes))


@app.command()
def evaluate(
    run: ModelArg = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="rows of inputs then targets (default: the run's held-out rows)"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object: loss, accuracy, rows")] = False,
) -> None:
    """Loss and accuracy of a run's model on the rows its config held out (data.holdout), or on a file."""
    from exmachina.tools import predict as tool

    _using(lambda: tool.evaluate(run, data, json_out))


@app.command()
def serve(
    run: RunArg = None,
    port: Annotated[int, typer.Option(help="port to serve on (0: any free port)")] = 8700,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    in_flight: Annotated[int, typer.Option(help="batches in the network at once")] = 16,
    batch: Annotated[int, typer.Option(help="rows per synapse message, at most")] = 64,
) -> None:
    """Serve a run's model through its neuron processes: POST /predict {"inputs": [[...], ...]} answers
    {"outputs": [[...], ...]}. Supervised as in training; Ctrl-C stops every process."""
    from exmachina.launch.serve import serve as run_serve

    raise typer.Exit(run_serve(run, host, port, in_flight, batch))


# -- looking inside a run: logs, inspect, ps, trace (exmachina/tools/inspection.py, ps.py, trace.py) ---


def _inspecting(job) -> None:
    """Run one inspection command: its own failures are one line and exit 2, Ctrl-C a quiet stop."""
    import contextlib
    import os

    from exmachina.tools.inspection import InspectError

    try:
        code = job()
    except InspectError as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 0
    except BrokenPipeError:  # `exmachina logs | head`
        code = 0
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(code)


@app.command()
def logs(
    run: RunArg = None,
    neuron: Annotated[
        list[str] | None, typer.Option("--neuron", "-n", help="a neuron id (or coordinator, supervisor)")
    ] = None,
    layer: Annotated[list[str] | None, typer.Option("--layer", "-l", help="every neuron of a layer")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run ends")] = False,
    level: Annotated[
        str | None, typer.Option("--level", help="lowest level shown: debug, info or warning")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="one JSON object per line: time, level, neuron, message")
    ] = False,
) -> None:
    """Print a run's logs (all, a layer's or one neuron's), merged in time order; --follow a live run."""
    from exmachina.tools.inspection import InspectError, show_logs

    def job() -> int:
        if level is not None and level.lower() not in ("debug", "info", "warning"):
            raise InspectError(f"--level {level}: choose debug, info or warning")
        return show_logs(run, neuron or (), layer or (), follow, level, json_lines)

    _inspecting(job)


@app.command()
def inspect(
    neuron: Annotated[str, typer.Option("--neuron", "-n", help="the neuron, e.g. hidden1.3")],
    run: RunArg = None,
) -> None:
    """One neuron's story: synapses, weights and how they moved, activity, errors, messages, restarts."""
    from exmachina.tools.inspection import inspect_neuron

    _inspecting(lambda: inspect_neuron(run, neuron))


@app.command()
def ps(
    run: RunArg = None,
    once: Annotated[bool, typer.Option("--once", help="print the table once (the default)")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh until the run ends")] = False,
) -> None:
    """Every process of a live run: pid, CPU, memory, messages per second, queue depth, problems."""
    from exmachina.tools.ps import show_processes

    _inspecting(lambda: show_processes(run, watch=watch and not once))


@app.command()
def kill(
    neuron: Annotated[str, typer.Option("--neuron", "-n", help="the neuron, e.g. hidden1.3")],
    run: RunArg = None,
    signal: Annotated[str, typer.Option("--signal", "-s", help="KILL, TERM, STOP, CONT ...")] = "KILL",
) -> None:
    """Signal one neuron process of this run only (by default kill -9: its supervisor restarts it)."""
    from exmachina.tools.ps import kill_neuron

    _inspecting(lambda: kill_neuron(run, neuron, signal))


@app.command()
def trace(
    sample: Annotated[int, typer.Option("--sample", "-s", help="the sample number, from 1")],
    run: RunArg = None,
) -> None:
    """One sample's path, forward then backward, with the time of every hop (needs log level debug)."""
    from exmachina.tools.trace import show_trace

    _inspecting(lambda: show_trace(run, sample))


def main() -> None:
    app()
