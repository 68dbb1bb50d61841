"""A host agent: one Ray actor per node, running our own supervisor and zygote there.

The agent is to its node what `exmachina learn`'s supervisor is to one machine: it forks the node's
share of neurons from a preloaded zygote (the same preload, rehearsal, titles and memory per neuron
as a local run) and restarts a neuron that dies, one_for_one, without asking the driver. Ray only
places the agent and restarts it should the agent itself die; then its neurons end with it (the
zygote's lifeline) and the new agent starts them again from their checkpoints on this node's disk.
No synapse message goes through Ray: the neurons bind tcp on this node's address and talk to their
peers directly, with CURVE.

A neuron's log and checkpoints live in a directory of this node (the run directory is on the
driver's host). The driver asks for them every second (`sync`) and keeps a copy in the run
directory, so that a node that is lost for good takes at most a second of checkpoints with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from exmachina.launch.children import NEURON_PRELOAD, neuron_children
from exmachina.model.topology import NeuronSpec
from exmachina.network import curve
from exmachina.rundir.directory import Site
from exmachina.rundir.logs import Log, close_log, open_log
from supervisor import Event, Supervisor

LIFELINE_INTERVAL_S = 0.5
#: What the driver holds of a file, by path relative to the run directory: its size in bytes.
Held = dict[str, int]
#: What the driver lacks of a file: (offset it starts at, the bytes); offset 0 replaces the file.
Missing = dict[str, tuple[int, bytes]]


def _set_title(title: str) -> None:
    import setproctitle

    setproctitle.setproctitle(title)


def node_dir(node_id: str, run_name: str) -> Path:
    """Where the neurons of a run keep their logs and checkpoints on this node."""
    return Path(tempfile.gettempdir()) / "exmachina-ray" / node_id[:16] / run_name


class HostAgent:
    """Supervises the neurons `specs` on this node. `seed`: files to lay down before they start (a
    lost node's checkpoints and logs, when its neurons move here); `restart` is the runtime's
    (max_restarts, restart_period)."""

    def __init__(
        self,
        name: str,
        specs: list[NeuronSpec],
        site: Site,
        keys: dict[str, curve.Keypair] | None,
        restart: tuple[int, float],
        seed: Missing | None = None,
    ) -> None:
        import ray

        self.name, self.owners = name, {name, *(s.id for s in specs)}
        node = ray.get_runtime_context().get_node_id()
        self.local = node_dir(node, Path(site.run_dir).name)
        (self.local / "neurons").mkdir(parents=True, exist_ok=True)
        (self.local / "checkpoints").mkdir(exist_ok=True)
        for path, (_, data) in (seed or {}).items():
            if not (self.local / path).exists():  # a restarted agent keeps what its neurons wrote
                (self.local / path).write_bytes(data)
        self.site = replace(site, place=ray.util.get_node_ip_address(), run_dir=str(self.local))
        self.log: Log = open_log(
            name, self.local / "neurons" / f"{name}.log", site.log_level, site.log_max_bytes, site.log_backups
        )
        _set_title(f"exmachina: agent {name}")  # its zygote is titled after it
        self.live: dict[str, int] = {}  # neuron -> pid, from the supervisor's events (no lock needed)
        self.log.info(
            "agent pid=%d on node %s (%s): %d neurons", os.getpid(), node, self.site.place, len(specs)
        )
        intensity, period = restart
        children = [
            replace(child, target=_bound_to_zygote, args=(child.target, *child.args))
            for child in neuron_children(specs, self.site, keys)
        ]
        self.supervisor = Supervisor(
            children,
            strategy="one_for_one",
            intensity=intensity,
            period=period,
            preload=[*NEURON_PRELOAD, "exmachina.launch.agent"],
            on_event=self._event,
        )
        self.supervisor.start()
        self._lock = threading.Lock()
        self._orphaned = threading.Event()
        threading.Thread(target=self._lifeline, args=(os.getppid(),), name="raylet", daemon=True).start()

    def _lifeline(self, raylet: int) -> None:
        """A Ray worker is its raylet's child: once this process is orphaned, its node has left the
        cluster, and the driver starts these neurons elsewhere. They must not go on here as well."""
        while os.getppid() == raylet:
            time.sleep(LIFELINE_INTERVAL_S)
        self.log.error("the raylet (pid %d) is gone: this node left the cluster; stopping", raylet)
        self._orphaned.set()
        try:
            self.supervisor.stop()
            self.forget()  # the driver holds their copies, and the neurons go on elsewhere
        finally:
            os._exit(1)

    def _event(self, event: Event) -> None:
        if event.kind == "started" and event.child and event.pid:
            self.live[event.child] = event.pid
        elif event.kind == "exited" and event.child:
            self.live.pop(event.child, None)
        failed = event.kind in ("exited", "restarting", "intensity_exceeded") and event.exitcode
        say = self.log.warning if failed else self.log.info
        say("%s %s pid=%s exitcode=%s", event.kind, event.child or "", event.pid, event.exitcode)

    def run(self) -> str:
        """Supervise until told to stop, or until this node's restart intensity is exceeded; the
        supervisor's reason."""
        outcome = self.supervisor.run()
        if self._orphaned.is_set():  # no answer: this process ends, and its node is lost to the driver
            threading.Event().wait()
        self.log.info("agent stopped: %s after %d restarts", outcome.reason, outcome.restarts)
        return outcome.reason

    def stop(self) -> None:
        self.supervisor.request_stop()

    def where(self) -> dict:
        """This agent's pid, node and address, and its neurons' pids."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "node": node, "ip": self.site.place, "neurons": self.supervisor.pids}

    def sync(self, held: Held) -> Missing:
        """What of this agent's files the driver lacks, given what it holds: a checkpoint it has not
        got, whole; the tail of a log past the bytes it has (the whole log, once it rotated)."""
        with self._lock:
            missing: Missing = {}
            for path in self._files():
                name = str(path.relative_to(self.local))
                with contextlib.suppress(OSError):  # a checkpoint the neuron just replaced
                    size = path.stat().st_size
                    have = held.get(name, 0)
                    if name.startswith("checkpoints/"):
                        if name not in held:
                            missing[name] = (0, path.read_bytes())
                    elif size != have:
                        start = have if size > have else 0
                        with path.open("rb") as f:
                            f.seek(start)
                            missing[name] = (start, f.read(size - start))
            return missing

    def _files(self) -> list[Path]:
        """This agent's files: its own log, and its neurons' logs and checkpoints (one listing of
        each folder, however many neurons; a neuron's files start with its id and a dot)."""
        found = []
        for folder in ("neurons", "checkpoints"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.local / folder) as entries:
                for entry in entries:
                    owner = _owner(entry.name)
                    if owner in self.owners and not entry.name.startswith("."):
                        found.append(Path(entry.path))
        return found

    def forget(self) -> None:
        """Remove this agent's files from the node once the driver holds them, and the run's folders
        when no other agent's files are left in them. A neuron still running (its supervisor stops
        them one by one, and Ray is about to end this process) is killed first: were this process
        and its zygote ended by Ray, a neuron would be left with no one to stop it."""
        for nid, pid in list(self.live.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.log.warning("%s pid=%d still running at the end: killed", nid, pid)
        close_log(self.log)
        for path in self._files():
            path.unlink(missing_ok=True)
        for folder in (
            self.local / "neurons",
            self.local / "checkpoints",
            self.local,
            *self.local.parents[:2],
        ):
            with contextlib.suppress(OSError):  # not empty: another agent's, another run's
                folder.rmdir()


def _owner(name: str) -> str:
    """Whose file this is: `hidden.3.log.1` and `hidden.3.000000000020.ckpt` are hidden.3's,
    `agent-1a2b3c4d.log` is that agent's."""
    stem = name.split(".log")[0] if ".log" in name else name.removesuffix(".ckpt").rsplit(".", 1)[0]
    return stem


PR_SET_PDEATHSIG = 1


def _bound_to_zygote(target: Callable[..., None], *args: object) -> None:
    """Run a neuron that dies with the zygote it was forked from. On a Ray node the agent and its
    zygote may be ended together (Ray kills a worker's children when it stops the worker), and a
    neuron left behind would go on with no one to stop it, after its node has left the run."""
    zygote = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # pragma: no cover - Linux only
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != zygote:  # it died before the binding took
        raise SystemExit(1)
    target(*args)
