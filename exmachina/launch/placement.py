"""Neurons on several hosts: one host agent per Ray node, each our own supervisor there.

The driver (`exmachina learn`'s supervisor, which keeps the coordinator as a local child) joins the
cluster, deals the neurons to nodes by their labels (a node is named by a custom resource its `ray
start --resources` declares) and starts one `HostAgent` actor on each node that holds neurons, pinned
to it. The agent forks and supervises that node's neurons; see `agent.py`. Ray carries no synapse
traffic, only the agents' start, their files and their stop.

Three kinds of failure, three owners:
- a neuron dies: its agent restarts it from its checkpoint on that node, as a local run does;
- an agent dies: its neurons end with it, Ray starts the agent again (`placement.max_restarts`) and
  it starts them again from their checkpoints;
- a node is lost (its raylet and every process on it gone): the driver moves that node's neurons to
  a surviving node (`placement.fallback` labels, or the one holding the fewest neurons), with the
  checkpoints it keeps of them in the run directory (fetched every second), so at most
  `checkpoint_every` updates and a second are lost; the coordinator wires them in and replays. When
  no node can take them, the run stops, and `--resume` takes it up on any cluster.

Ray is an optional extra (`pip install exmachina[ray]`): only this module and `agent.py` import it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exmachina.config import Config
from exmachina.model import topology
from exmachina.model.topology import COORDINATOR, NeuronSpec
from exmachina.network import curve
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import RunDir, Site
from exmachina.rundir.logs import Log

SYNC_INTERVAL_S = 1.0  # how often the driver fetches the agents' new checkpoints and log lines
CALL_TIMEOUT_S = 30.0
STOP_PER_NEURON_S = 0.1


class PlacementError(RuntimeError):
    """Ray is missing, or the cluster cannot be joined or cannot hold the placement."""


def ray_module():
    try:
        import ray
    except ImportError:
        raise PlacementError(
            "placement.engine is ray but Ray is not installed: pip install 'exmachina[ray]'"
        ) from None
    return ray


def join(config: Config, resuming: bool = False) -> str:
    """Connect this process to the cluster as its driver and check that every label the placement
    names is a node's (a resumed run may find another cluster: its neurons then go where a lost
    node's would); returns this node's address, where the coordinator binds."""
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
    alive = alive_nodes()
    for label in sorted({label for label in labels(config).values() if label is not None}):
        if not resuming and not any(label in node.labels for node in alive):
            ray.shutdown()
            raise PlacementError(
                f"{config.source}: placement: no node of the cluster at {config.placement.address} "
                f"declares the label {label!r} (ray start --resources='{{\"{label}\": 1}}')"
            )
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


def labels(config: Config) -> dict[str, str | None]:
    """Each neuron's node label (None: the driver's node), in placement order."""
    names = [layer.name for layer in config.network.layers]
    ids = [(nid, name) for i, name in enumerate(names) for nid in topology.layer_ids(config, i)]
    return {nid: config.placement.node_of(nid, name, k) for k, (nid, name) in enumerate(ids)}


@dataclass(frozen=True)
class Node:
    id: str
    ip: str
    labels: frozenset[str]

    def __str__(self) -> str:
        return f"{self.id[:12]} ({self.ip})"


def alive_nodes() -> list[Node]:
    ray = ray_module()
    return [
        Node(n["NodeID"], n["NodeManagerAddress"], frozenset(n.get("Resources", {})))
        for n in ray.nodes()
        if n.get("Alive")
    ]


@dataclass
class Agent:
    """The driver's record of one host agent."""

    name: str
    node: Node
    specs: list[NeuronSpec]
    actor: Any  # the Ray actor handle
    running: Any  # the reference of its run() call


class RayAgents:
    """The run's host agents: started one per node, watched, their files kept in the run directory,
    a lost node's neurons moved, all stopped at the end."""

    def __init__(self, config: Config, site: Site, specs: list[NeuronSpec], run: RunDir, log: Log) -> None:
        self.config, self.site, self.specs, self.run, self.log = config, site, specs, run, log
        self.agents: list[Agent] = []
        self.failure: str | None = None  # why the run cannot go on, once it cannot
        self.held: dict[str, int] = {}  # what the run directory holds of the agents' files: bytes
        self._keys: dict[str, curve.Keypair] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._on_failure: Callable[[], None] = lambda: None

    # -- start ----------------------------------------------------------------------------------

    def start(self, keys: dict[str, curve.Keypair] | None, on_failure: Callable[[], None]) -> None:
        ray = ray_module()
        self._keys, self._on_failure = keys or {}, on_failure
        here = ray.get_runtime_context().get_node_id()
        alive = alive_nodes()
        by_node: dict[Node, list[NeuronSpec]] = {}
        label_of = labels(self.config)
        for spec in self.specs:
            label = label_of[spec.id]
            node = next((n for n in alive if (n.id == here if label is None else label in n.labels)), None)
            if node is None:  # a resumed run on a cluster without that label
                node = self._fallback(None, by_node)
                if node is None:
                    self._fail(f"no node of the cluster can take {spec.id} (label {label!r})")
                    return
                self.log.warning("no node declares %r: %s goes to node %s", label, spec.id, node)
            by_node.setdefault(node, []).append(spec)
        for node, specs in by_node.items():
            self._start_agent(node, specs)
        self._watcher = threading.Thread(target=self._watch, name="agents", daemon=True)
        self._watcher.start()

    def _start_agent(self, node: Node, specs: list[NeuronSpec], seed: dict | None = None) -> Agent:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from exmachina.launch.agent import HostAgent

        ray = ray_module()
        rt = self.config.runtime
        name = f"agent-{node.id[:8]}" + (
            f"-{len(self.agents)}" if any(a.node == node for a in self.agents) else ""
        )
        actor = (
            ray.remote(HostAgent)
            .options(
                num_cpus=0,
                max_restarts=self.config.placement.max_restarts,
                max_task_retries=-1,  # run() goes on in the restarted agent
                max_concurrency=4,  # sync() and stop() reach an agent that is running
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
            )
            .remote(
                name,
                specs,
                self.site,
                {s.id: self._keys[s.id] for s in specs if s.id in self._keys},
                (rt.max_restarts, rt.restart_period),
                seed,
            )
        )
        agent = Agent(name, node, specs, actor, actor.run.remote())
        self.agents.append(agent)
        self.log.info("%s: %d neurons on node %s: %s", name, len(specs), node, _some([s.id for s in specs]))
        return agent

    # -- watch ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Each second: fetch what the agents wrote; handle an agent whose run() ended."""
        ray = ray_module()
        while not self._stopping.is_set() and self.failure is None:
            running = {a.running: a for a in self.agents}
            done, _ = ray.wait(list(running), num_returns=1, timeout=SYNC_INTERVAL_S)
            if self._stopping.is_set():
                return
            for ref in done:
                self._ended(running[ref])
            for agent in list(self.agents):
                self._sync(agent)

    def _ended(self, agent: Agent) -> None:
        """An agent's run() came back while the run goes on: its node was lost (move its neurons),
        or its supervisor gave up (too many restarts), or Ray gave up restarting it."""
        ray = ray_module()
        self.agents.remove(agent)
        try:
            reason = ray.get(agent.running)
        except Exception as exc:  # any way an actor can be lost
            if any(n.id == agent.node.id for n in alive_nodes()):
                self._fail(
                    f"Ray could not keep {agent.name} on node {agent.node} alive (placement.max_restarts "
                    f"{self.config.placement.max_restarts}; {type(exc).__name__})"
                )
            else:
                self._move(agent)
            return
        self._fail(f"{agent.name} on node {agent.node} stopped its neurons: {reason}")

    def _fail(self, why: str) -> None:
        self.failure = why
        self.log.error("%s", why)
        self._on_failure()

    def _move(self, lost: Agent) -> None:
        """Start the lost node's neurons on a surviving node, from what the run directory holds."""
        ids = [s.id for s in lost.specs]
        self.log.warning("node %s lost with %s (%d neurons)", lost.node, lost.name, len(ids))
        target = self._fallback(lost.node)
        if target is None:
            wanted = ", ".join(self.config.placement.fallback) or "any node"
            self._fail(f"node {lost.node} was lost and no surviving node can take its neurons ({wanted})")
            return
        seed = self._home_files(ids)
        cut = {nid: max(checkpoints.counts(self.run.path, nid), default=0) for nid in ids}
        network = self._network_updates()
        restored = min(cut.values())
        self.log.warning(
            "moving %s to node %s: restored from their checkpoints at update %s; the network is at "
            "update %s: %s updates lost",
            _some(ids),
            target,
            restored if len(set(cut.values())) == 1 else f"{restored}-{max(cut.values())}",
            network if network is not None else "?",
            network - restored if network is not None else "?",
        )
        self._start_agent(target, lost.specs, seed)

    def _fallback(self, lost: Node | None, placed: dict[Node, list[NeuronSpec]] | None = None) -> Node | None:
        """Where a lost node's neurons go: the first surviving node with a `placement.fallback`
        label, or without any, the surviving node that holds the fewest neurons (`placed`: those
        being dealt, before their agents start)."""
        survivors = [n for n in alive_nodes() if lost is None or n.id != lost.id]
        wanted = self.config.placement.fallback
        chosen = next((n for label in wanted for n in survivors if label in n.labels), None)
        if chosen is not None or (wanted and lost is not None):
            return chosen  # a resumed run (lost None) takes any node when no fallback is there
        if not survivors:
            return None
        load = {n.id: sum(len(a.specs) for a in self.agents if a.node.id == n.id) for n in survivors}
        for node, specs in (placed or {}).items():
            load[node.id] = load.get(node.id, 0) + len(specs)
        return min(survivors, key=lambda n: load[n.id])

    def _home_files(self, ids: list[str]) -> dict[str, tuple[int, bytes]]:
        """The run directory's copies of these neurons' checkpoints and logs, to seed a new node."""
        found = {}
        for nid in ids:
            for path in [
                *self.run.path.glob(f"checkpoints/{nid}.*.ckpt"),
                *self.run.path.glob(f"neurons/{nid}.log*"),
            ]:
                found[str(path.relative_to(self.run.path))] = (0, path.read_bytes())
        return found

    def _network_updates(self) -> int | None:
        """The updates the coordinator last reported (stats.json), or None if it has not yet."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(self.run.stats.read_text())["coordinator"]["updates"])
        return None

    # -- files ----------------------------------------------------------------------------------

    def _sync(self, agent: Agent, timeout: float = CALL_TIMEOUT_S) -> None:
        """Bring the agent's new checkpoints and log lines into the run directory."""
        ray = ray_module()
        try:
            missing = ray.get(agent.actor.sync.remote(self.held), timeout=timeout)
        except Exception as exc:  # restarting, lost, or slow: the next round asks again
            self.log.debug("%s: no files this round (%s)", agent.name, type(exc).__name__)
            return
        for name, (offset, data) in missing.items():
            target = self.run.path / name
            if offset == 0:
                checkpoints.write_atomic(target.with_name(f".{target.name}.tmp"), target, data)
                self.held[name] = len(data)
            else:
                with target.open("ab") as f:
                    f.write(data)
                self.held[name] = offset + len(data)
        if missing:
            self._prune_home()

    def _prune_home(self) -> None:
        """Keep the run directory's checkpoints down to the newest cut that every neuron and the
        coordinator have there. The agents prune their own a second or more ahead of what has come
        home, and a lost node's last files at home must still meet the others' in a cut that a
        resume can take; so the coordinator leaves its pruning to this, too."""
        owners = [s.id for s in self.specs] + [COORDINATOR]
        for name in checkpoints.prune_below_cut(self.run.path, owners):
            self.held.pop(name, None)

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every agent (and so every neuron), bring their files home, release the actors. The
        supervisor's log says where each neuron ran."""
        ray = ray_module()
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=CALL_TIMEOUT_S)
        for agent in self.agents:
            with contextlib.suppress(Exception):
                at = ray.get(agent.actor.where.remote(), timeout=10.0)
                for nid, pid in at["neurons"].items():
                    self.log.info("neuron %s ran on node %s (%s) pid %s", nid, at["node"], at["ip"], pid)
            agent.actor.stop.remote()
        if self.agents:
            # an agent stops its neurons one by one, as the local supervisor does
            grace = CALL_TIMEOUT_S + STOP_PER_NEURON_S * max(len(a.specs) for a in self.agents)
            ray.wait([a.running for a in self.agents], num_returns=len(self.agents), timeout=grace)
        for agent in self.agents:
            self._sync(agent)
            with contextlib.suppress(Exception):
                ray.get(agent.actor.forget.remote(), timeout=10.0)
            ray.kill(agent.actor, no_restart=True)
        self.log.info("%d files of %d agents kept in the run directory", len(self.held), len(self.agents))
        ray.shutdown()


def _some(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
