"""Neurons on several hosts: each neuron a Ray actor, pinned to a node by a custom resource label.

Ray places the processes and keeps them alive (an actor whose process dies is restarted and its
`serve` call retried, so the neuron comes back from its checkpoint and says HELLO again, exactly like
a local restart). Ray carries no synapse traffic: neurons bind `tcp://` on their own node's address
and talk to each other directly over ZeroMQ, with CURVE, as they do on one host.

A neuron on Ray keeps its log and checkpoints in a directory local to its node (the run directory
may not exist there); when the run ends the driver fetches them into the run directory, so
`exmachina logs` and `inspect` read a Ray run like any other.

Ray is an optional extra (`pip install exmachina[ray]`): only this module imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from exmachina.config import Config
from exmachina.model.topology import NeuronSpec
from exmachina.network import curve
from exmachina.rundir.directory import RunDir, Site
from exmachina.rundir.logs import Log

# A neuron asks for this much of its node's label: a node declaring {"a": 1} holds 10,000 neurons.
LABEL_SHARE = 0.0001
STOP_WAIT_S = 30.0


class PlacementError(RuntimeError):
    """Ray is missing, or the cluster cannot be joined."""


def ray_module():
    try:
        import ray
    except ImportError:
        raise PlacementError(
            "placement.engine is ray but Ray is not installed: pip install 'exmachina[ray]'"
        ) from None
    return ray


def join(config: Config) -> str:
    """Connect this process to the cluster as its driver; returns this node's address, where the
    coordinator binds."""
    ray = ray_module()
    _reachable(config.placement.address)
    try:
        ray.init(
            address=config.placement.address,
            namespace="exmachina",
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PlacementError(f"placement.address {config.placement.address!r}: {exc}") from None
    return ray.util.get_node_ip_address()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """ray.init waits minutes on an address where nothing listens: try the port first."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PlacementError(f"placement.address {address!r}: expected host:port, auto or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PlacementError(f"placement.address {address!r}: no Ray cluster there ({exc})") from None


def node_dir(node_id: str, run_name: str) -> Path:
    """Where a neuron on this node keeps its log and checkpoints during the run."""
    return Path(tempfile.gettempdir()) / "exmachina-ray" / node_id[:16] / run_name


def _owned(root: Path, nid: str) -> list[Path]:
    """A neuron's own files under a run-shaped directory: its logs and its checkpoints."""
    return [*root.glob(f"neurons/{nid}.log*"), *root.glob(f"checkpoints/{nid}.*.ckpt")]


class NeuronActor:
    """The Ray actor around one neuron process. `serve` runs the neuron until it is told to stop;
    `stop` may arrive meanwhile (two calls at once: max_concurrency 2)."""

    def __init__(self, spec: NeuronSpec, site: Site, keys: curve.Keypair | None) -> None:
        import ray

        self.spec, self.keys = spec, keys
        node = ray.get_runtime_context().get_node_id()
        self.local = node_dir(node, Path(site.run_dir).name)
        (self.local / "neurons").mkdir(parents=True, exist_ok=True)
        self.site = dataclasses.replace(site, place=ray.util.get_node_ip_address(), run_dir=str(self.local))
        self.process = None

    def serve(self) -> str:
        from exmachina.network.neuron import serve

        serve(self.spec, self.site, self.keys, started=self._started)
        return self.spec.id

    def _started(self, process) -> None:
        self.process = process

    def stop(self) -> None:
        """Ask the neuron to stop as SIGTERM would (it looks between messages, at least each second)."""
        if self.process is not None:
            self.process.stop_signal.append(signal.SIGTERM)

    def where(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "ip": self.site.place}

    def files(self) -> dict[str, bytes]:
        """This neuron's log and checkpoints, by path relative to the run directory; then forgets
        them here, so a node keeps nothing of a finished run."""
        owned = _owned(self.local, self.spec.id)
        found = {str(p.relative_to(self.local)): p.read_bytes() for p in owned}
        for path in owned:
            path.unlink(missing_ok=True)
        return found

    def tidy(self) -> None:
        """Remove the run's folders on this node once every neuron's files are fetched (and the
        shared parents, if no other run uses them)."""
        for folder in (
            self.local / "neurons",
            self.local / "checkpoints",
            self.local,
            *self.local.parents[:2],
        ):
            with contextlib.suppress(OSError):  # not empty: another run's, or a stranger's file
                folder.rmdir()


class RayNeurons:
    """The run's neurons as actors: started in placement order, watched, stopped, their files
    fetched. The local supervisor still runs the coordinator."""

    def __init__(self, config: Config, site: Site, specs: list[NeuronSpec], log: Log) -> None:
        self.config, self.site, self.specs, self.log = config, site, specs, log
        self.actors: dict[str, Any] = {}  # Ray actor handles
        self.serving: dict[object, str] = {}  # serve() reference -> neuron id
        self.failed: list[str] = []
        self._watcher: threading.Thread | None = None

    def start(self, keys: dict[str, curve.Keypair] | None, on_failure) -> None:
        ray = ray_module()
        actor_class = ray.remote(NeuronActor)
        p, names = self.config.placement, [layer.name for layer in self.config.network.layers]
        for k, spec in enumerate(self.specs):
            node = p.node_of(spec.id, names[spec.layer], k)
            options: dict[str, Any] = {
                "num_cpus": 0,
                "max_restarts": p.max_restarts,
                "max_task_retries": -1,  # serve() is retried on the restarted actor
                "max_concurrency": 2,  # stop() can reach a neuron that is serving
            }
            if node is not None:
                options["resources"] = {node: LABEL_SHARE}
            actor = actor_class.options(**options).remote(spec, self.site, (keys or {}).get(spec.id))
            self.actors[spec.id] = actor
            self.serving[actor.serve.remote()] = spec.id
            self.log.info("neuron %s: actor requested on node %s", spec.id, node or "(any)")
        self._watcher = threading.Thread(target=self._watch, args=(on_failure,), daemon=True)
        self._watcher.start()

    def _watch(self, on_failure) -> None:
        """A serve() that ends in an error means Ray gave up restarting that actor: like a local
        supervisor's intensity exceeded, the run stops."""
        ray = ray_module()
        pending = list(self.serving)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                nid = self.serving[ref]
                try:
                    ray.get(ref)
                except Exception as exc:  # any way an actor can be lost
                    self.failed.append(nid)
                    self.log.error("neuron %s lost for good (%s)", nid, type(exc).__name__)
                    on_failure(nid)

    def _ask_all(self, method: str, timeout: float) -> dict[str, Any]:
        """Call one method on every actor still in the run, all at once; the answers that came
        within `timeout`, by neuron (an actor that never started holds up no other)."""
        ray = ray_module()
        asked = {
            getattr(actor, method).remote(): nid
            for nid, actor in self.actors.items()
            if nid not in self.failed
        }
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=timeout)
        answers = {}
        for ref in ready:
            try:
                answers[asked[ref]] = ray.get(ref)
            except Exception:  # it died meanwhile
                continue
        missing = [nid for nid in asked.values() if nid not in answers]
        if missing:
            self.log.warning("%d neurons did not answer %s(): %s", len(missing), method, _some(missing))
        return answers

    def stop(self, run: RunDir) -> None:
        """Stop every neuron still serving, fetch each one's files into the run directory, then
        release the actors. The supervisor's log says where each neuron ran."""
        ray = ray_module()
        for nid, at in self._ask_all("where", timeout=10.0).items():
            self.log.info("neuron %s ran on node %s (%s) pid %d", nid, at["node"], at["ip"], at["pid"])
        for nid, actor in self.actors.items():
            if nid not in self.failed:
                actor.stop.remote()
        ray.wait(list(self.serving), num_returns=len(self.serving), timeout=STOP_WAIT_S)
        fetched = 0
        for files in self._ask_all("files", timeout=STOP_WAIT_S).values():
            for name, data in files.items():
                target = run.path / name
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(data)
                fetched += 1
        self._ask_all("tidy", timeout=STOP_WAIT_S)
        self.log.info("fetched %d files from %d neurons' nodes", fetched, len(self.actors))
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        ray.shutdown()


def _some(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
