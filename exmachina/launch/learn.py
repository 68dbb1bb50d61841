"""Entry point: `python -m exmachina.supervisor --config configs/xor.yaml`.

Loads and checks the config and data (a fault is one line and exit 2, before anything exists), lays
out the run directory and the socket directory, then hands one child spec per neuron and one for the
coordinator to the generic `supervisor` package and waits for the coordinator to finish.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import psutil
import typer

from exmachina.config import Config, ConfigError, load_config
from exmachina.data import datasets
from exmachina.data.datasets import DatasetError
from exmachina.launch import placement
from exmachina.model import parameters as parameters_module
from exmachina.model import topology
from exmachina.model.parameters import Parameters
from exmachina.model.topology import COORDINATOR, NeuronSpec
from exmachina.network import curve, transport
from exmachina.network.coordinator import coordinate
from exmachina.network.neuron import serve
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import RunDir, Site, resolve
from exmachina.rundir.logs import Log, close_log, open_log
from supervisor import ChildSpec, Event, Supervisor

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STALLED = 0, 1, 2, 3
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def prepare(config_path: str | Path) -> tuple[Config, datasets.Dataset]:
    """Everything that can be checked before a single file or process is made."""
    config = load_config(config_path)
    return config, datasets.load(config)


@dataclass
class Resumption:
    """Where a stopped or crashed run takes up again: its newest consistent checkpoint."""

    run: RunDir
    count: int
    parameters: Parameters
    position: dict


def find_resumption(run: RunDir, config: Config) -> Resumption:
    ids_by_layer = [topology.layer_ids(config, i) for i in range(len(config.layer_sizes))]
    owners = [nid for ids in ids_by_layer for nid in ids] + [COORDINATOR]
    count = checkpoints.common_count(run.path, owners)
    if count is None:
        raise checkpoints.CheckpointError(
            f"{run.path}: no checkpoint that every neuron and the coordinator share"
        )
    parameters = checkpoints.assemble(run.path, parameters_module.initial(config), ids_by_layer, count)
    position = checkpoints.load(run.path, COORDINATOR, count)
    return Resumption(run, count, parameters, position)


def learn(config_path: str | Path | None = None, resume: str | Path | None = None, out=print) -> int:
    """Train a config through the process network (or resume a run); returns the exit code."""
    try:
        resumption = None
        if resume is not None:
            run = resolve(resume)
            if not run.config.exists():
                raise ConfigError(f"{run.path}: not a run directory (no config.yaml)")
            config, data = prepare(run.config)
            resumption = find_resumption(run, config)
        else:
            config, data = prepare(config_path)
        sockets = transport.socket_dir() if config.runtime.transport == "ipc" else None
        host = placement.join(config) if config.placement.engine == "ray" else config.runtime.host
    except (
        ConfigError,
        DatasetError,
        transport.TransportError,
        checkpoints.CheckpointError,
        placement.PlacementError,
        OSError,
    ) as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _learn(config, data, sockets, host, resumption, out)
    finally:
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)


def _learn(
    config: Config,
    data: datasets.Dataset,
    sockets: Path | None,
    host: str,
    resumption: Resumption | None,
    out,
) -> int:
    """`host`: the address tcp processes bind here (this Ray node's address on a Ray placement)."""
    try:
        _set_title("exmachina: supervisor")
        rt = config.runtime
        if sockets is not None:
            coordinator = transport.bind_address("ipc", str(sockets), COORDINATOR)
            for spec_id in topology.layer_ids(config, 0):  # the longest names are checked up front
                transport.bind_address("ipc", str(sockets), topology.socket_name(spec_id))
        else:
            coordinator = f"tcp://{host}:{_free_port(host)}"
    except (transport.TransportError, OSError) as exc:
        print(f"exmachina: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    train, holdout = datasets.split(data, config.data.holdout, config.seed)
    if resumption is None:
        run, start, updates, position = RunDir.create(config), parameters_module.initial(config), 0, None
    else:
        run, start, updates, position = (
            resumption.run,
            resumption.parameters,
            resumption.count,
            resumption.position,
        )
        ids = [s.id for s in topology.neurons(config, start)] + [COORDINATOR]
        checkpoints.discard_after(run.path, ids, updates)
        run.truncate_metrics(position["epoch"])
    specs = topology.neurons(config, start, updates)
    # CURVE keys live only in memory: each child's own keypair travels in its start arguments (the
    # forkserver's pipe), the public ones in the Site. A resumed run makes new ones: nothing to keep.
    keys = curve.generate([s.id for s in specs] + [COORDINATOR]) if config.uses_curve else None
    site = Site(
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
    on_ray = config.placement.engine == "ray"
    children = child_specs(config, site, [] if on_ray else specs, (train, holdout), position, keys)
    log = open_log("supervisor", run.log("supervisor"), rt.log_level, rt.log_max_bytes, rt.log_backups)
    actors = placement.RayNeurons(config, site, specs, log) if on_ray else None
    sup = Supervisor(
        children,
        strategy="one_for_one",
        intensity=rt.max_restarts,
        period=rt.restart_period,
        auto_shutdown="any_significant",
        preload=[
            "exmachina.network.neuron",
            "exmachina.network.coordinator",
            "psutil",
            "exmachina.network.rehearsal:rehearse",
        ],
        on_event=lambda e: _log_event(log, e),
    )
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        sup.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in SIGNAL_EXIT}
    memory = _PeakMemory(interval=2.0 + 0.02 * len(specs))
    try:
        verb = f"resuming at update {updates}" if resumption else "run directory"
        out(f"exmachina: {len(specs)} neurons + coordinator, {verb} {run.path}")
        sup.start()
        if actors is not None:  # a neuron Ray gave up on stops the run, as too many restarts do here
            actors.start(keys, on_failure=lambda nid: sup.request_stop())
        memory.start()
        outcome = sup.run()
    finally:
        if actors is not None:
            actors.stop(run)
        sup.stop()
        memory.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        close_log(log)
    summary = run.read_summary() or {"status": "failed"}
    code = outcome.exitcodes.get(COORDINATOR)
    crashed = outcome.reason == "intensity_exceeded" or (not received and code not in (0, EXIT_STALLED))
    if crashed:
        summary["status"] = "crashed"
        summary["model_from_checkpoints"] = _model_from_checkpoints(config, run)
    summary.update(
        processes=len(specs) + 2,
        peak_pss_mb=round(memory.peak / 2**20, 1),
        supervisor_restarts=outcome.restarts,
        supervisor_outcome=outcome.reason,
    )
    run.write_summary(summary)
    out(_describe(summary, run))
    if received:
        return SIGNAL_EXIT[received[0]]
    if outcome.reason == "intensity_exceeded":
        print(
            f"exmachina: too many restarts (more than {rt.max_restarts} in {rt.restart_period:g} s): run "
            f"stopped, see {run.log('supervisor')}; resume with: exmachina learn --resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if actors is not None and actors.failed:
        print(
            f"exmachina: Ray could not keep neuron {actors.failed[0]} alive (placement.max_restarts "
            f"{config.placement.max_restarts}): run stopped; resume with: exmachina learn --resume "
            f"{run.path}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if crashed:
        print(
            f"exmachina: the coordinator died (exit code {code}); resume with: exmachina learn --resume "
            f"{run.path}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary.get("status") == "stalled":
        return EXIT_STALLED
    return EXIT_OK if code == 0 and summary.get("status") == "completed" else EXIT_FAILED


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
    children = [
        ChildSpec(
            id=s.id,
            target=serve,
            args=(s, site, keys.get(s.id)),
            restart="permanent",
            shutdown=5.0,
            title=f"exmachina: neuron {s.id}",
        )
        for s in specs
    ]
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
    """Save what can be saved: model.npz from the newest checkpoint every neuron shares."""
    ids_by_layer = [topology.layer_ids(config, i) for i in range(len(config.layer_sizes))]
    count = checkpoints.common_count(run.path, [nid for ids in ids_by_layer for nid in ids])
    if count is None:
        return None
    try:
        checkpoints.assemble(run.path, parameters_module.initial(config), ids_by_layer, count).save(run.model)
    except checkpoints.CheckpointError:
        return None
    return count


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
    lines.append(f"  run: {run.path}  (model.npz, metrics.jsonl, summary.json, neurons/*.log)")
    return "\n".join(lines)


def _log_event(log: Log, event: Event) -> None:
    failed = event.kind in ("exited", "restarting", "intensity_exceeded") and event.exitcode
    say = log.warning if failed else log.info
    say("%s %s pid=%s exitcode=%s", event.kind, event.child or "", event.pid, event.exitcode)


def _set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # pragma: no cover - it is a dependency
        pass


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _PeakMemory:
    """Peak memory of the whole process tree, sampled every few seconds, as the sum of PSS: each
    shared page (numpy, pyzmq, inherited from the forkserver) counted once, not once per process.
    Each reading walks every process's page tables (5% of the CPU every 2 s with 276 neurons), so
    bigger trees are read less often."""

    def __init__(self, interval: float = 2.0) -> None:
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error, OSError, ValueError):
                    total += _pss(proc)
            self.peak = max(self.peak, total)
            if self._stop.wait(self.interval):
                return


def _pss(proc: psutil.Process) -> int:
    """PSS from smaps_rollup: the kernel sums it for us, far cheaper than psutil's full smaps walk
    (which cost the supervisor a few percent of the CPU with hundreds of neurons)."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return proc.memory_full_info().pss


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
