"""Entry point: `python -m exmachina.supervisor --config configs/xor.yaml`.

Loads and checks the config and data (a fault is one line and exit 2, before anything exists), lays
out the run directory and the socket directory, then hands one child spec per neuron and one for the
coordinator to the generic `supervisor` package and waits for the coordinator to finish.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from exmachina.config import Config, ConfigError, load_config
from exmachina.data import datasets
from exmachina.data.datasets import DatasetError
from exmachina.launch import capacity, placement
from exmachina.launch.children import NEURON_PRELOAD, neuron_children
from exmachina.launch.running import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STALLED,
    SIGNAL_EXIT,
    SUPERVISOR_TITLE,
    Ending,
    coordinator_address,
    how,
    network_supervisor,
    set_title,
    supervise,
)
from exmachina.model import learning, topology
from exmachina.model import parameters as parameters_module
from exmachina.model.parameters import Parameters
from exmachina.model.topology import COORDINATOR, NeuronSpec
from exmachina.network import coordinator as coordinator_module
from exmachina.network import curve, transport
from exmachina.network.coordinator import NO_SPACE, NO_SPACE_EXIT, Position, all_finite, coordinate
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import RunDir, RunInUse, Site, resolve
from exmachina.rundir.logs import open_log
from supervisor import ChildSpec

STOPPING = "saving the model and a checkpoint"  # what Ctrl-C does, said at once


def prepare(config_path: str | Path, new_run: bool = True) -> tuple[Config, datasets.Dataset]:
    """Everything that can be checked before a single file or process is made."""
    config = load_config(config_path)
    capacity.check(config)
    if new_run:
        check_runs_dir(config)
    if config.runtime.transport == "tcp" and config.placement.engine == "local":
        check_host(config)
    return config, datasets.load(config)


def check_runs_dir(config: Config) -> None:
    """The run directory can be made: runs_dir is (or can become) a directory this process writes."""
    path = Path(config.runtime.runs_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    key = f"{config.source}: runtime.runs_dir"
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot write in {existing} (read-only or not ours)")


def check_host(config: Config) -> None:
    """The address neurons bind over tcp is one of this machine's (a probe: the port is let go, and
    no process is told of it)."""
    host = config.runtime.host
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        raise ConfigError(
            f"{config.source}: runtime.host: cannot bind {host!r} here ({exc.strerror or exc})"
        ) from None


@dataclass
class Resumption:
    """Where a stopped or crashed run takes up again: its newest consistent checkpoint."""

    run: RunDir
    count: int
    parameters: Parameters
    position: dict


def find_resumption(run: RunDir, config: Config) -> Resumption:
    """The newest consistent cut that loads: a damaged file in a newer one is reported on stderr
    and that cut passed over."""
    ids_by_layer = [topology.layer_ids(config, i) for i in range(len(config.layer_sizes))]
    owners = [nid for ids in ids_by_layer for nid in ids] + [COORDINATOR]
    initial = parameters_module.initial(config)
    for count in checkpoints.shared_counts(run.path, owners):
        try:
            parameters = checkpoints.assemble(run.path, initial, ids_by_layer, count)
            position = checkpoints.load(run.path, COORDINATOR, count)
        except checkpoints.CheckpointError as exc:
            print(f"exmachina: {exc}: trying an older checkpoint", file=sys.stderr)
            continue
        return Resumption(run, count, parameters, position)
    raise checkpoints.CheckpointError(
        f"{run.path}: no checkpoint that every neuron and the coordinator share"
    )


def initial_cut(run: RunDir, specs: list[NeuronSpec]) -> None:
    """The initial weights as a consistent cut at count 0: a run that crashes before its first
    checkpoint resumes from where it began."""
    for s in specs:
        weight_moments = learning.moments(s.optimizer, s.axon) if s.plastic_axon else []
        bias_moments = [0.0] * len(learning.moments(s.optimizer, np.zeros(1))) if s.learn_bias else []
        state = checkpoints.neuron_state(s.axon, s.bias, 0, weight_moments, bias_moments)
        checkpoints.save(run.path, s.id, 0, state, kept=[])
    checkpoints.save(run.path, COORDINATOR, 0, Position().state(), kept=[])


def learn(
    config_path: str | Path | None = None,
    resume: str | Path | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Train a config through the process network (or resume a run); returns the exit code."""
    resumed: RunDir | None = None
    try:
        resumption = None
        if resume is not None:
            resumed = _resumable(resume)
            config, data = prepare(resumed.config, new_run=False)
            resumption = find_resumption(resumed, config)
        elif config_path is not None:
            config, data = prepare(config_path)
        else:
            raise ConfigError("give a config file or a run to resume")
        sockets = transport.socket_dir() if config.runtime.transport == "ipc" else None
        host = (
            placement.join(config, resuming=resume is not None)
            if config.placement.engine == "ray"
            else config.runtime.host
        )
    except (
        ConfigError,
        DatasetError,
        transport.TransportError,
        checkpoints.CheckpointError,
        placement.PlacementError,
        RunInUse,
        OSError,
    ) as exc:
        if resumed is not None:
            resumed.release()
        print(f"exmachina: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _learn(config, data, sockets, host, resumption, out)
    finally:
        if resumed is not None:
            resumed.release()
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)


def _resumable(resume: str | Path) -> RunDir:
    """The run to resume, claimed for this process: neither one still running (its files are being
    written) nor one that completed (a resume would only train it past its end)."""
    run = resolve(resume)
    if not run.config.exists():
        raise ConfigError(f"{run.path}: not a run directory (no config.yaml)")
    run.claim()
    try:
        summary = run.read_summary() or {}
    except ValueError:  # a summary cut short: the run did not end well
        summary = {}
    if summary.get("status") == "completed":
        run.release()
        raise ConfigError(
            f"{run.path}: completed after {summary.get('epochs')} epochs: nothing to resume "
            f"(its model is {run.model})"
        )
    return run


def _learn(
    config: Config,
    data: datasets.Dataset,
    sockets: Path | None,
    host: str,
    resumption: Resumption | None,
    out: Callable[[str], None],
) -> int:
    """Lay out the run, start the supervisor with every child, wait for the end, write the summary.
    `host`: the address tcp processes bind here (this Ray node's address on a Ray placement)."""
    try:
        set_title(SUPERVISOR_TITLE)
        coordinator = coordinator_address(config, sockets, host)
    except (transport.TransportError, OSError) as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rt = config.runtime
    train, holdout = datasets.split(data, config.data.holdout, config.seed)
    try:
        run, start, updates, position = _starting_point(config, resumption)
    except OSError as exc:
        print(
            f"exmachina: {config.source}: runtime.runs_dir: cannot make the run directory: {exc}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:  # the run directory is this process's until it returns (RunDir.claim)
        specs = topology.neurons(config, start, updates)
        if resumption is None:
            try:
                initial_cut(run, specs)
            except OSError as exc:
                print(f"exmachina: {run.path}: cannot write the initial checkpoint: {exc}", file=sys.stderr)
                return EXIT_FAILED
        # CURVE keys live only in memory: each child's own keypair travels in its start arguments (the
        # zygote's pipe), the public ones in the Site. A resumed run makes new ones: nothing to keep.
        keys = curve.generate([s.id for s in specs] + [COORDINATOR]) if config.uses_curve else None
        site = _site(config, sockets, host, coordinator, run, keys)
        if rt.transport == "tcp" and not config.uses_curve:
            print(
                f"exmachina: WARNING: curve: off over tcp: links on {host} are in the clear, and any "
                "process that reaches a port can forge frames or stop the run (docs/security.md)",
                file=sys.stderr,
            )
        on_ray = config.placement.engine == "ray"
        children = child_specs(config, site, [] if on_ray else specs, (train, holdout), position, keys)
        (run.path / coordinator_module.ADDRESS_FILE).unlink(missing_ok=True)  # a resumed run's, stale
        log = open_log("supervisor", run.log("supervisor"), rt.log_level, rt.log_max_bytes, rt.log_backups)
        actors = placement.RayAgents(config, site, specs, run, log) if on_ray else None
        sup = network_supervisor(children, rt, log, NEURON_PRELOAD, comeback="from its checkpoint")
        verb = f"resuming at update {updates}" if resumption else "run directory"
        hello = f"exmachina: {len(specs)} neurons + coordinator, {verb} {run.path}"
        ending = supervise(sup, run, log, len(specs), lambda: out(hello), STOPPING, actors, keys)
        summary = _summarize(config, run, ending, processes=len(specs) + 2)
        out(_describe(summary, run))
        return _exit_code(config, run, ending, actors, summary)
    finally:
        run.release()


def _site(
    config: Config,
    sockets: Path | None,
    host: str,
    coordinator: str,
    run: RunDir,
    keys: dict[str, curve.Keypair] | None,
) -> Site:
    """Where every process of this run binds, reports and logs."""
    rt = config.runtime
    return Site(
        rt.transport,
        str(sockets) if sockets else host,
        coordinator,
        str(run.path),
        rt.log_level,
        rt.log_max_bytes,
        rt.log_backups,
        rt.stats_interval,
        rt.checkpoint_every,
        curve.public_keys(keys) if keys else None,
    )


def _starting_point(
    config: Config, resumption: Resumption | None
) -> tuple[RunDir, Parameters, int, dict | None]:
    """(run directory, parameters, updates done, coordinator position): a new run from the seed's
    draw, or a resumed one from its checkpoint, with everything written after that checkpoint gone."""
    if resumption is None:
        initial = parameters_module.initial(config)  # drawn first: a fault here leaves no directory
        return RunDir.create(config, claim=True), initial, 0, None
    run, start, updates, position = (
        resumption.run,
        resumption.parameters,
        resumption.count,
        resumption.position,
    )
    ids = [s.id for s in topology.neurons(config, start)] + [COORDINATOR]
    checkpoints.discard_after(run.path, ids, updates)
    run.truncate_metrics(position["epoch"])
    return run, start, updates, position


def _crashed(ending: Ending) -> bool:
    """Stopped by too many restarts, or the coordinator died unasked."""
    return ending.outcome.reason == "intensity_exceeded" or (
        not ending.signals and ending.code not in (0, EXIT_STALLED, NO_SPACE_EXIT)
    )


def _summarize(config: Config, run: RunDir, ending: Ending, processes: int) -> dict:
    """The coordinator's summary.json with the supervisor's side of the story added, written back;
    a crashed or diverged run also saves the model its neurons' checkpoints hold (for a diverged
    one the newest whose weights are all finite). On a full disk what cannot be written is left."""
    try:
        summary = run.read_summary() or {"status": "failed"}
    except ValueError:  # a summary cut short
        summary = {"status": "failed"}
    if ending.code == NO_SPACE_EXIT:
        summary["status"] = "disk_full"
    elif _crashed(ending):
        summary["status"] = "crashed"
    try:
        if summary["status"] in ("crashed", "diverged"):
            summary["model_from_checkpoints"] = _model_from_checkpoints(config, run)
        summary.update(
            processes=processes,
            peak_pss_mb=round(ending.peak_pss / 2**20, 1),
            supervisor_restarts=ending.outcome.restarts,
            supervisor_outcome=ending.outcome.reason,
        )
        run.write_summary(summary)
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        summary.update(status="disk_full", error=str(exc))
    return summary


def _exit_code(
    config: Config, run: RunDir, ending: Ending, actors: placement.RayAgents | None, summary: dict
) -> int:
    """The exit code, with a line on stderr saying how to resume a run that failed."""
    rt = config.runtime
    if ending.signals:
        print(
            f"exmachina: stopped at update {summary.get('updates', 0)}; resume with: exmachina learn "
            f"--resume {run.path}",
            file=sys.stderr,
        )
        return SIGNAL_EXIT[ending.signals[0]]
    if ending.outcome.reason == "intensity_exceeded":
        print(
            f"exmachina: too many restarts (more than {rt.max_restarts} in {rt.restart_period:g} s): run "
            f"stopped, see {run.log('supervisor')}; resume with: exmachina learn --resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if actors is not None and actors.failure:
        print(
            f"exmachina: {actors.failure}: run stopped; resume with: exmachina learn --resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if _crashed(ending):
        print(
            f"exmachina: the coordinator died ({how(ending.code)}); resume with: exmachina learn "
            f"--resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    resume = f"exmachina learn --resume {run.path}"
    if summary.get("status") == "disk_full":
        print(
            f"exmachina: disk full ({summary.get('error', 'no space left')}): run stopped, its checkpoints "
            f"kept; free some space, then resume with: {resume}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary.get("status") == "diverged":
        kept = summary.get("model_from_checkpoints")
        model = f"model.npz holds the weights at update {kept}" if kept is not None else "no model written"
        print(
            f"exmachina: training diverged ({summary.get('error')}): run stopped, {model}; lower "
            "training.learning_rate, or set training.nan_policy: ignore",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary.get("status") == "stalled":
        print(
            f"exmachina: the run stalled (no progress for {config.training.stall_timeout:g} s, see "
            f"{run.log(COORDINATOR)}): no model written; resume with: {resume}",
            file=sys.stderr,
        )
        return EXIT_STALLED
    return EXIT_OK if ending.code == 0 and summary.get("status") == "completed" else EXIT_FAILED


def child_specs(
    config: Config,
    site: Site,
    specs: list[NeuronSpec],
    data: tuple[datasets.Dataset, datasets.Dataset | None],
    position: dict | None,
    keys: dict[str, curve.Keypair] | None,
) -> list[ChildSpec]:
    """One child per neuron (none when Ray runs the neurons), then the coordinator. With CURVE each
    child is handed its own keypair, and only its own: a restarted neuron comes back with the same
    key, so its peers still trust it."""
    keys = keys or {}
    children = neuron_children(specs, site, keys)
    # The coordinator is not restarted: if it dies the run stops (the model is rebuilt from the neurons'
    # checkpoints) and `exmachina learn --resume RUN` takes up from the last consistent checkpoint.
    train, holdout = data
    children.append(
        ChildSpec(
            id=COORDINATOR,
            target=coordinate,
            args=(
                config,
                site,
                train,
                holdout if config.data.holdout else None,
                position,
                keys.get(COORDINATOR),
            ),
            restart="temporary",
            significant=True,
            shutdown=60.0,
            title="exmachina: coordinator",
        )
    )
    return children


def _model_from_checkpoints(config: Config, run: RunDir) -> int | None:
    """Save what can be saved: model.npz from the newest checkpoint every neuron shares that loads
    and is all finite; its count, or None."""
    ids_by_layer = [topology.layer_ids(config, i) for i in range(len(config.layer_sizes))]
    initial = parameters_module.initial(config)
    for count in checkpoints.shared_counts(run.path, [nid for ids in ids_by_layer for nid in ids]):
        try:
            parameters = checkpoints.assemble(run.path, initial, ids_by_layer, count)
        except checkpoints.CheckpointError:
            continue
        if all_finite(parameters):
            parameters.save(run.model)
            return count
    return None


def _describe(s: dict, run: RunDir) -> str:
    lines = [
        f"exmachina: {s.get('status')} after {s.get('epochs', 0)} epochs ({s.get('samples', 0)} samples) "
        f"in {s.get('wall_time_s', 0):.1f} s, {s.get('samples_per_s', 0):.0f} samples/s"
    ]
    if "final_loss" in s:
        lines.append(f"  final loss {s['final_loss']:.4f}, accuracy {s['accuracy']:.1%}")
    if s.get("holdout_accuracy") is not None:
        lines.append(
            f"  held-out accuracy {s['holdout_accuracy']:.1%} (best {s['best_holdout_accuracy']:.1%} "
            f"at epoch {s['best_epoch']})"
        )
    lines.append(f"  {s.get('processes')} processes, peak memory {s.get('peak_pss_mb')} MB (PSS, whole tree)")
    written = [f.name for f in (run.model, run.metrics, run.summary) if f.exists()]
    lines.append(f"  run: {run.path}  ({', '.join([*written, 'neurons/*.log'])})")
    return "\n".join(lines)


def main(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config, e.g. configs/xor.yaml")
    ] = None,
    resume: Annotated[str | None, typer.Option(help="a stopped or crashed run to continue")] = None,
) -> None:
    """Train a network in which every neuron is its own process."""
    if (config is None) == (resume is None):
        print("exmachina: give --config FILE or --resume RUN", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(learn(config, resume))
