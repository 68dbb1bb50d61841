"""A network of processes under one supervisor, from its start until it ends or is stopped: what
`learn` and `serve` share.

Both title the process `exmachina: supervisor` (the tools find a run's processes by their titles
and their ancestry), bind the coordinator the same way, supervise the neurons one_for_one with the
runtime's restart intensity, say on the terminal when a neuron restarts, and stop on SIGINT or
SIGTERM. What differs is what a restarted neuron comes back with, and what a stop keeps: the words
for both are the caller's.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import setproctitle

from exmachina.config import Config, RuntimeConfig
from exmachina.launch import placement
from exmachina.launch.memory import PeakMemory
from exmachina.model import topology
from exmachina.model.topology import COORDINATOR
from exmachina.network import coordinator as coordinator_module
from exmachina.network import curve, transport
from exmachina.rundir.directory import RunDir
from exmachina.rundir.logs import Log, close_log
from supervisor import ChildSpec, Event, Outcome, Supervisor

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STALLED = 0, 1, 2, 3
SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
SUPERVISOR_TITLE = "exmachina: supervisor"


def set_title(title: str) -> None:
    """The name `ps` shows for this process, and the one the tools look for."""
    setproctitle.setproctitle(title)


def coordinator_address(config: Config, sockets: Path | None, host: str) -> str:
    """Where the coordinator binds: an ipc socket in `sockets` (the longest names are checked up
    front, so that a socket directory too deep fails here, not in a child) or any tcp port of
    `host`, the one the coordinator's own bind gets."""
    if sockets is None:
        return f"tcp://{host}:*"  # the coordinator binds, then publishes the port it got
    coordinator = transport.bind_address("ipc", str(sockets), COORDINATOR)
    for layer in range(len(config.layer_sizes)):
        longest = topology.layer_ids(config, layer)[-1]  # the highest index has the most digits
        transport.bind_address("ipc", str(sockets), topology.socket_name(longest))
    return coordinator


def network_supervisor(
    children: list[ChildSpec], runtime: RuntimeConfig, log: Log, preload: Sequence[str], comeback: str
) -> Supervisor:
    """One_for_one over the neurons and the coordinator, whose end (significant) ends the rest.
    `comeback`: what a restarted neuron starts from, for the line the terminal shows."""
    return Supervisor(
        children,
        strategy="one_for_one",
        intensity=runtime.max_restarts,
        period=runtime.restart_period,
        auto_shutdown="any_significant",
        preload=preload,
        on_event=lambda event: _report(log, event, comeback),
        subreaper=True,  # a killed zygote's children come to this process, which reads how they exit
    )


@dataclass
class Ending:
    """How the supervised network ended."""

    outcome: Outcome
    signals: list[int]  # SIGINT or SIGTERM received, which stopped it
    peak_pss: int  # bytes, the whole tree

    @property
    def code(self) -> int | None:
        """The coordinator's exit code."""
        return self.outcome.exitcodes.get(COORDINATOR)


def supervise(
    sup: Supervisor,
    run: RunDir,
    log: Log,
    neurons: int,
    started: Callable[[], None],
    stopping: str,
    actors: placement.RayAgents | None = None,
    keys: dict[str, curve.Keypair] | None = None,
) -> Ending:
    """Run the supervisor (and the Ray agents) until the network ends or SIGINT/SIGTERM asks it to
    stop, saying `stopping` at once when asked; whatever happens, stop all it started, put the
    signal handlers back and close the log."""
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if not received:
            print(f"\nexmachina: stopping: {stopping} ...", file=sys.stderr, flush=True)
        received.append(signum)
        sup.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in SIGNAL_EXIT}
    memory = PeakMemory(interval=2.0 + 0.02 * neurons)
    try:
        started()
        sup.start()
        if actors is not None:
            _start_agents(sup, actors, run, log, keys)
        memory.start()
        outcome = sup.run()
    finally:
        if actors is not None:
            actors.stop()
        sup.stop()
        memory.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        close_log(log)
    return Ending(outcome, received, memory.peak)


def _start_agents(
    sup: Supervisor,
    actors: placement.RayAgents,
    run: RunDir,
    log: Log,
    keys: dict[str, curve.Keypair] | None,
) -> None:
    """The Ray agents start their neurons once the coordinator has bound; a node that cannot go on
    stops the run, as too many restarts do here."""
    try:
        bound = coordinator_module.await_address(str(run.path))
    except TimeoutError as exc:  # the coordinator died before it bound: its exit ends the run
        log.error("%s", exc)
        sup.request_stop()
        return
    actors.site = dataclasses.replace(actors.site, coordinator=bound)
    actors.start(keys, on_failure=sup.request_stop)


def _report(log: Log, event: Event, comeback: str) -> None:
    """Every supervisor event in its log; a neuron's restart on the terminal too."""
    failed = event.kind in ("exited", "restarting", "intensity_exceeded") and event.exitcode
    say = log.warning if failed else log.info
    say("%s %s pid=%s exitcode=%s", event.kind, event.child or "", event.pid, event.exitcode)
    if event.kind == "restarting" and event.child != COORDINATOR:
        print(
            f"exmachina: neuron {event.child} ended ({how(event.exitcode)}): restarting it {comeback}",
            file=sys.stderr,
            flush=True,
        )


def how(exitcode: int | None) -> str:
    """How a process ended, in words: `killed by SIGKILL`, `exit code 1`."""
    if exitcode is not None and -exitcode in signal.valid_signals():
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"
