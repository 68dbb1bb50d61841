"""`exmachina serve RUN`: a trained network started again as neuron processes, answering over HTTP.

Reads the run's config.yaml and model.npz, lays out a serve directory inside the run for the logs of
this serving (RUN/serve-<time>/: neurons/*.log, metrics.jsonl with any restarts, summary.json) and a
private socket directory, and hands one child per neuron and the serving coordinator to the same
supervisor as training: one_for_one, so a neuron that dies is started again from its spec, which holds
the model's weights, and the coordinator replays what was in flight. Learning is off: no axon is
plastic, no bias moves, no neuron writes a checkpoint, and only forward-only samples travel.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from exmachina import web
from exmachina.config import Config, ConfigError
from exmachina.launch.children import neuron_children
from exmachina.launch.running import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    SUPERVISOR_TITLE,
    coordinator_address,
    how,
    network_supervisor,
    set_title,
    supervise,
)
from exmachina.model import topology
from exmachina.model.parameters import Parameters
from exmachina.model.topology import COORDINATOR, NeuronSpec
from exmachina.model.trained import ModelError, load
from exmachina.network import curve, transport
from exmachina.network.neuron import MAX_PENDING
from exmachina.network.server import Options, serve_network
from exmachina.rundir.directory import RunDir, Site, resolve
from exmachina.rundir.logs import open_log
from supervisor import ChildSpec

DEFAULT_PORT = 8700
IN_FLIGHT = 16  # batches in the network at once
BATCH = 64  # rows per synapse message, at most


def serve(
    run: str | Path | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    in_flight: int = IN_FLIGHT,
    batch: int = BATCH,
    out: Callable[[str], None] | None = None,
) -> int:
    """Serve a run's model through its neuron processes until Ctrl-C or SIGTERM; returns the exit code."""
    try:
        if not 1 <= in_flight <= MAX_PENDING or batch < 1:
            raise ModelError(
                f"--in-flight must be 1 to {MAX_PENDING} (the samples a neuron holds at once) and --batch "
                f"at least 1, got {in_flight} and {batch}"
            )
        if problem := web.port_problem(port):
            raise ModelError(problem)
        where, config, parameters = model_of(run)
        sockets = transport.socket_dir() if config.runtime.transport == "ipc" else None
    except (ModelError, ConfigError, transport.TransportError, OSError) as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = Options(host, port, in_flight, batch, str(where.path))
    try:
        return _serve(where, config, parameters, sockets, options, out or _say)
    finally:
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)


def _say(text: str) -> None:
    print(text, flush=True)  # in step with the coordinator's own line, even down a pipe


def model_of(run: str | Path | None) -> tuple[RunDir, Config, Parameters]:
    """The run directory, its config and its model; raises ModelError for anything that does not fit."""
    model = load(run)
    if model.config is None:
        raise ModelError(f"{run}: serving needs the run directory (its config.yaml), not a bare model file")
    if model.layer_sizes != model.config.layer_sizes:
        raise ModelError(f"model.npz has layers {model.layer_sizes}, config.yaml {model.config.layer_sizes}")
    return resolve(run), model.config, model.parameters


def serving_specs(config: Config, parameters: Parameters) -> list[NeuronSpec]:
    """Every neuron with the model's weights and learning off."""
    return [
        dataclasses.replace(spec, learning_rate=0.0, learn_bias=False, plastic_axon=False)
        for spec in topology.neurons(config, parameters)
    ]


def serve_dir(run: RunDir) -> RunDir:
    """A fresh RUN/serve-<time>/: neurons/ for the logs, and the run's config."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = run.path / (f"serve-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "neurons").mkdir()
        shutil.copyfile(run.config, path / "config.yaml")  # so that logs, ps and inspect read it as a run
        return RunDir(path)
    raise FileExistsError(f"{run.path}: no free serve directory name for {stamp}")


def _serve(
    run: RunDir,
    config: Config,
    parameters: Parameters,
    sockets: Path | None,
    options: Options,
    out: Callable[[str], None],
) -> int:
    rt = config.runtime
    try:
        set_title(SUPERVISOR_TITLE)
        coordinator = coordinator_address(config, sockets, rt.host)
        served = serve_dir(run)
    except (transport.TransportError, OSError) as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    specs = serving_specs(config, parameters)
    keys = curve.generate([s.id for s in specs] + [COORDINATOR]) if config.uses_curve else None
    site = Site(
        rt.transport,
        str(sockets) if sockets else rt.host,
        coordinator,
        str(served.path),
        rt.log_level,
        rt.log_max_bytes,
        rt.log_backups,
        rt.stats_interval,
        0,  # no checkpoints: a restarted neuron takes up the model's weights from its spec
        curve.public_keys(keys) if keys else None,
    )
    server = ChildSpec(
        id=COORDINATOR,
        target=serve_network,
        args=(config, site, options, (keys or {}).get(COORDINATOR)),
        restart="temporary",  # if it dies, serving ends: the supervisor stops the neurons
        significant=True,
        shutdown=10.0,
        title="exmachina: coordinator",  # the title the tools know it by
    )
    log = open_log("supervisor", served.log("supervisor"), rt.log_level, rt.log_max_bytes, rt.log_backups)
    preload = ["exmachina.network.neuron", "exmachina.network.server", "psutil"]
    children = [*neuron_children(specs, site, keys), server]
    sup = network_supervisor(children, rt, log, preload, comeback="with the model's weights")
    hello = f"exmachina: {len(specs)} neurons + coordinator for {run.path}, logs in {served.path}"
    ending = supervise(sup, served, log, len(specs), lambda: out(hello), "answering the requests in flight")
    if ending.code == EXIT_BAD_INPUT and not ending.signals:  # its port: the coordinator said which
        shutil.rmtree(served.path, ignore_errors=True)  # it served nothing: leave nothing
        return EXIT_BAD_INPUT
    summary = served.read_summary()
    if summary is not None:
        out(
            f"exmachina: serving {summary['status']}: {summary['requests']} requests, "
            f"{summary['rows']} rows, {summary['restarts']} restarts"
        )
    if ending.signals:
        return EXIT_OK
    if ending.outcome.reason == "intensity_exceeded":
        print(
            f"exmachina: too many restarts (more than {rt.max_restarts} in {rt.restart_period:g} s): "
            f"serving stopped, see {served.log('supervisor')}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    code = ending.code
    print(
        f"exmachina: the coordinator ended ({how(code)}): serving stopped, see {served.log(COORDINATOR)}",
        file=sys.stderr,
    )
    return code if code is not None and code > 0 else EXIT_FAILED
