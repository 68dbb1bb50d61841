"""The coordinator: wires the network, feeds samples, turns outputs into errors, keeps the score.

It is the far end of every edge synapse: the sensor of each input neuron and the target of each
output neuron. Exact online SGD keeps one sample in flight: the next sample starts only when every
input neuron has sent its error back, i.e. when every weight in the network has been updated.

When a neuron dies, its supervisor restarts it from its last checkpoint and it says HELLO again.
The coordinator then wires it back in, tells every neuron to DROP the sample that was in flight,
and replays that sample under a new id. The updates the neuron made since its checkpoint are lost
(at most `checkpoint_every`), and are counted in metrics.jsonl.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import numpy as np
import zmq

from exmachina.config import STARTUP_TIMEOUT_S, Config
from exmachina.data.datasets import Dataset, epoch_order
from exmachina.model.activations import LOSSES, accuracy, predictions
from exmachina.model.parameters import Parameters, of_config
from exmachina.model.topology import COORDINATOR, INBOX, NeuronSpec, layer_ids
from exmachina.network import curve, transport, wire
from exmachina.network.neuron import serve
from exmachina.network.progress import Progress
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import RunDir, Site, write_json
from exmachina.rundir.logs import DEBUG, Log, close_log, open_log

RECENT = 200  # the original's progress figure: share correct of the last 200 training predictions
SHOWN_PREDICTIONS = 20  # kept in predictions.json for the viewer
STOP_GRACE_S = 0.5  # on SIGTERM: for the sample in flight, then for the final checkpoint (an
# orphaned coordinator gets 2 s in all from SIGTERM to SIGKILL: supervisor.lifeline.ORPHAN_GRACE_S)
MAX_REPLAYS = 3  # a sample that stalls this many times running ends the run
EVAL_BATCH = 64  # rows per message when only evaluating
NO_SPACE_EXIT = 4  # the coordinator's exit code when the disk is full, as summary.json may not be written
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
SYNAPSE = wire.SYNAPSE_RECORDS


class Stalled(RuntimeError):
    """No message arrived within the stall timeout: a neuron is gone or wedged."""


class Diverged(RuntimeError):
    """A loss or a weight is NaN or infinite (training.nan_policy: stop)."""


class Stopped(Exception):
    """SIGTERM arrived and the wait in hand outlived STOP_GRACE_S: what it waited for is abandoned."""


@final
@dataclass(frozen=True, slots=True)
class Restart:
    """A known neuron said HELLO again: its supervisor restarted it, and it must be wired back in.
    Not a wire message: what the receive path makes of a second HELLO, for the wait to handle."""

    neuron: str


Received = wire.Message | Restart


@dataclass
class Peer:
    id: str
    pid: int
    endpoints: dict[str, str]
    updates: int
    control: zmq.Socket | None = None  # linked by Coordinator._link before any send
    linked: bool = False  # the coordinator's links lead to this process (not yet, or restarted)

    def send(self, frame: bytes) -> None:
        """A control message to this neuron."""
        assert self.control is not None, f"{self.id} is not linked"
        self.control.send(frame)


@dataclass
class Flight:
    """One batch on its way through the network (rows of x and y are its samples)."""

    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    kind: int  # FORWARD (learning) or INFER
    outputs: np.ndarray | None = None  # (outputs, batch) as they arrive
    seen: set = field(default_factory=set)
    output: np.ndarray | None = None  # all outputs, once in
    errors_sent: bool = False
    back: set = field(default_factory=set)  # input neurons whose error came back

    def take(self, message: wire.Synapse, data: bytes, outputs: int, inputs: int) -> bool:
        """Take this batch's part (`data`) of a synapse message; False if it is not one of ours."""
        sender = message.sender
        if message.kind == wire.BACKWARD:
            if self.errors_sent and 0 <= sender < inputs and sender not in self.back:
                self.back.add(sender)
                return True
            return False
        if message.kind != self.kind or self.output is not None or not 0 <= sender < outputs:
            return False
        if sender in self.seen:
            return False
        values = wire.values(data)
        if len(values) != len(self.rows):
            return False
        if self.outputs is None:
            self.outputs = np.zeros((outputs, len(self.rows)))
        self.outputs[sender] = values
        self.seen.add(sender)
        if len(self.seen) == outputs:
            self.output = self.outputs
        return True

    def done(self, inputs: int) -> bool:
        """Forward-only: once the outputs are in. Learning: once every input neuron's error is back."""
        if self.kind == wire.INFER:
            return self.output is not None
        return self.errors_sent and len(self.back) == inputs

    def restart(self) -> Flight:
        return Flight(self.rows, self.x, self.y, self.kind)


@dataclass
class Position:
    """Where training stands; checkpointed with the neurons, so a run resumes exactly here."""

    epoch: int = 0  # the epoch in progress, from 0
    index: int = 0  # the next row of that epoch's order
    updates: int = 0  # batches the network has learnt from: every neuron's update count
    samples: int = 0  # training samples seen
    losses: list[float] = field(default_factory=list)  # this epoch's, so far
    correct: list[bool] = field(default_factory=list)  # this epoch's, so far
    recent: list[bool] = field(default_factory=list)  # the last RECENT, across epochs
    best: list | None = None  # [held-out accuracy, epoch] of the best epoch so far

    def state(self) -> dict:
        """For a checkpoint, which is written at once: a shallow copy (dataclasses.asdict would
        deep-copy every element of the lists, on every checkpoint)."""
        return dict(vars(self))


class Coordinator:
    def __init__(self, config: Config, site: Site, log: Log, keys: curve.Keypair | None = None) -> None:
        self.config = config
        self.keys = keys
        self.site = site
        self.log = log
        self.run = RunDir(site.run_dir)
        self.loss = LOSSES[config.training.loss]
        sizes = config.layer_sizes
        self.layers = [layer_ids(config, layer) for layer in range(len(sizes))]
        self.inputs, self.outputs = self.layers[0], self.layers[-1]
        self.layer_of = {nid: layer for layer, ids in enumerate(self.layers) for nid in ids}
        self.all_ids = list(self.layer_of)
        self.peers: dict[str, Peer] = {}
        sockets = 2 * len(self.all_ids) + len(self.inputs) + len(self.outputs) + 4
        self.ctx = transport.context(sockets + (curve.GATEKEEPER_SOCKETS if keys is not None else 0))
        self.gatekeeper = None
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, transport.HIGH_WATER_MARK)
        self.inbox.setsockopt(zmq.LINGER, 0)
        if keys is not None:  # every neuron of the run reports here, and no one else
            assert site.public_keys is not None, "a CURVE run names every public key"
            neurons = {nid: site.public_keys[nid] for nid in self.all_ids}
            self.gatekeeper = curve.Gatekeeper(self.ctx, neurons, log, site.public_keys)
            curve.serve(self.inbox, keys)
        self.inbox.bind(site.coordinator)
        if site.coordinator.endswith(":*"):  # tcp: the port is the one the kernel gave this socket
            bound = self.inbox.getsockopt_string(zmq.LAST_ENDPOINT)
            self.site = site = dataclasses.replace(site, coordinator=bound)
            publish_address(site.run_dir, bound)
        if self.gatekeeper is not None and keys is not None:
            self.gatekeeper.start(self.inbox)
            log.info("curve: inbox is a CURVE server with public key %s", keys.public.decode())
        self.sensors: dict[str, zmq.Socket] = {}
        self.error_links: dict[str, zmq.Socket] = {}
        self.sample = 0
        self.position = Position()
        self.kept = checkpoints.counts(site.run_dir, COORDINATOR)  # kept current by save(), not listed again
        # on Ray the neurons' checkpoints reach the run directory a second or more late: the driver
        # prunes the coordinator's too, so that the newest cut they all share is never lost
        self.keep = checkpoints.KEEP if config.placement.engine == "local" else None
        self.stop_requested_at: float | None = None
        self.backlog: collections.deque[wire.Message] = collections.deque()
        self.restarted: list[str] = []
        self.abandoned: collections.deque[int] = collections.deque(maxlen=64)
        self.dropped = 0
        self.restarts = 0
        self.stats: dict[str, dict] = {}  # latest STATS of each neuron
        self.stats_due = 0.0
        self.recent_predictions: collections.deque[dict] = collections.deque(maxlen=SHOWN_PREDICTIONS)

    def request_stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def close(self) -> None:
        """Close every socket and remove the inbox's socket file."""
        if self.gatekeeper is not None:  # its thread uses the context's sockets: it goes first
            self.gatekeeper.stop()
        self.ctx.destroy(linger=0)  # nothing it still queues is owed to anyone
        transport.release([self.site.coordinator])

    # -- messages -------------------------------------------------------------------------------

    def _receive(self, deadline: float) -> Received:
        """The next well-formed message, or a Restart when a known neuron says HELLO again: every wait
        of the coordinator goes through here. Raises Stalled past the deadline, and Stopped once a stop
        has waited longer than STOP_GRACE_S."""
        while True:
            if (
                self.stop_requested_at is not None
                and time.monotonic() - self.stop_requested_at > STOP_GRACE_S
            ):
                raise Stopped
            if self.backlog:
                message = self.backlog.popleft()
                if type(message) is wire.Hello and message.neuron in self.peers:
                    self._note_restart(message)
                    return Restart(message.neuron)
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Stalled(f"no message for {self.config.training.stall_timeout:.0f} s")
            self._wait(min(remaining, 0.25))

    def _wait(self, timeout: float) -> None:
        """Block up to `timeout` seconds for the inbox, then read what it holds into the backlog."""
        if self.inbox.poll(timeout * 1000):
            self._read_inbox()

    def _read_inbox(self) -> None:
        """Decode every frame queued on the inbox into the backlog; drop, count and log malformed ones."""
        for frame in transport.drain(self.inbox):
            try:
                self.backlog.append(wire.decode(frame))
            except wire.WireError as exc:
                self.dropped += 1
                self.log.warning("dropped message (%s): %r", exc, frame[:64])

    def _aside(self, message: wire.Message) -> None:
        """A message that is not the one being waited for."""
        if type(message) is wire.Stats:
            self.stats[message.neuron] = message.stats
            now = time.monotonic()
            if now >= self.stats_due:
                self.stats_due = now + self.site.stats_interval
                self.write_stats()
        elif isinstance(message, SYNAPSE) and any(s in self.abandoned for s, _ in wire.parts(message)):
            pass  # a straggler of a dropped sample
        else:
            self.log.warning("unexpected %s", wire.describe(message))

    def write_stats(self) -> None:
        me = {
            "pid": os.getpid(),
            "time": time.time(),
            "sample": self.sample,  # the last batch id: batches launched, replays and evaluation included
            "samples": self.position.samples,  # training samples learnt from
            "dropped": self.dropped,
            "updates": self.position.updates,  # training batches learnt from
            "restarts": self.restarts,
        }
        # rewritten every stats interval while every neuron waits on this process: compact
        write_json(self.run.stats, {"coordinator": me, "neurons": self.stats}, indent=None)

    # -- wiring ---------------------------------------------------------------------------------

    def connect(self) -> None:
        """Collect every neuron's HELLO, send each its wiring, wait until all are READY."""
        started = time.monotonic()
        deadline = started + self.config.startup_timeout
        while len(self.peers) < len(self.all_ids):
            message = self._receive(deadline)
            if type(message) is wire.Hello:
                self._greet(message)
            elif type(message) is not Restart:  # a restart before wiring: its HELLO is noted, no more
                self._aside(message)
        self.restarted.clear()  # every neuron is wired next, from its latest HELLO
        self._wire(self.all_ids, deadline)
        self.log.info("%d neurons wired and ready in %.3f s", len(self.all_ids), time.monotonic() - started)

    def _greet(self, hello: wire.Hello) -> None:
        """A first HELLO: the neuron becomes a peer, if it is one of this network's."""
        if hello.version != wire.VERSION or hello.neuron not in self.layer_of:
            self.log.warning("ignored hello from %s (protocol %s)", hello.neuron, hello.version)
            return
        self.peers[hello.neuron] = Peer(hello.neuron, hello.pid, hello.endpoints, hello.updates)

    def _link(self, nid: str) -> None:
        """(Re)connect the coordinator's own links to one neuron: control, and sensor or error link.

        Only when the neuron is new or restarted: messages on one socket arrive in order, on two
        they need not, and a neighbour wired twice (two restarts in a row) must take the second
        WIRE last."""
        peer = self.peers[nid]
        if peer.linked:
            return
        peer.linked = True
        for links, layer in ((self.sensors, 0), (self.error_links, len(self.layers) - 1)):
            if self.layer_of[nid] == layer:
                if nid in links:
                    links[nid].close()
                links[nid] = self._push(nid)
        if peer.control is not None:
            peer.control.close()
        peer.control = self._push(nid, transport.CONTROL_LINGER_MS)

    def _push(self, nid: str, linger_ms: int = transport.SYNAPSE_LINGER_MS) -> zmq.Socket:
        """A PUSH to a neuron's inbox: a CURVE client of that neuron's key when the run uses CURVE."""
        endpoint, public_keys = self.peers[nid].endpoints[INBOX], self.site.public_keys
        if self.keys is None or public_keys is None:  # both or neither: see __init__
            return transport.push(self.ctx, endpoint, linger_ms)
        return transport.push(self.ctx, endpoint, linger_ms, self.keys, public_keys[nid])

    def _wire(self, ids: list[str], deadline: float) -> None:
        """(Re)link neurons, tell them where their synapses lead, and wait until each is READY; a
        neuron restarted meanwhile (and its neighbours, when its endpoints moved) is wired too.

        A neuron answers each WIRE with one READY, in order, so the wait counts them: a neighbour
        wired twice (two restarts in a row) is ready only once it has taken the second wiring, before
        any sample is sent again. A restarted neuron's old process owes nothing any more."""
        waiting: collections.Counter[str] = collections.Counter()
        self._send_wiring(ids, waiting)
        while waiting:
            message = self._receive(deadline)
            if type(message) is Restart:
                waiting.pop(message.neuron, None)
                ids, self.restarted = list(dict.fromkeys(self.restarted)), []
                self._send_wiring(ids, waiting)
            elif type(message) is wire.Ready:
                waiting[message.neuron] -= 1
                if waiting[message.neuron] <= 0:
                    del waiting[message.neuron]
            else:
                self._aside(message)

    def _send_wiring(self, ids: list[str], waiting: collections.Counter[str]) -> None:
        last = len(self.layers) - 1
        me = [self.site.coordinator]
        for nid in ids:
            self._link(nid)
            layer = self.layer_of[nid]
            downstream = me if layer == last else self._endpoints(layer + 1)
            upstream = me if layer == 0 else self._endpoints(layer - 1)
            message = [wire.VERSION, downstream, upstream, self.position.updates]
            self.peers[nid].send(wire.encode(wire.WIRE, *message))
            waiting[nid] += 1

    def _endpoints(self, layer: int) -> list[str]:
        return [self.peers[n].endpoints[INBOX] for n in self.layers[layer]]

    def _note_restart(self, hello: wire.Hello) -> None:
        nid, pid, endpoints, updates = hello.neuron, hello.pid, hello.endpoints, hello.updates
        peer = self.peers[nid]
        moved = endpoints != peer.endpoints
        peer.pid, peer.endpoints, peer.updates = pid, endpoints, updates
        peer.linked = False
        if updates > self.position.updates:  # it checkpointed a batch the network has not counted:
            # it takes up its newest checkpoint at or below the network's count instead (see the neuron)
            kept = checkpoints.counts(self.run.path, nid)
            updates = max((c for c in kept if c <= self.position.updates), default=0)
        lost = self.position.updates - updates
        self.restarted.append(nid)
        self.restarts += 1
        self.log.warning(
            "%s restarted (pid %d) from update %d: %d updates lost%s",
            nid,
            pid,
            updates,
            lost,
            ", endpoints moved" if moved else "",
        )
        self.run.append_metrics(
            {
                "event": "restart",
                "neuron": nid,
                "pid": pid,
                "sample": self.sample,
                "updates": self.position.updates,
                "updates_lost": lost,
                "detected": time.time(),
            }
        )
        if moved:  # its neighbours must reconnect to its new endpoints
            layer = self.layer_of[nid]
            neighbours = [
                n for i in (layer - 1, layer + 1) if 0 <= i < len(self.layers) for n in self.layers[i]
            ]
            self.restarted.extend(n for n in neighbours if n not in self.restarted)

    def recover(self, dropped: list[int]) -> None:
        """Wire restarted neurons back in and have every neuron drop the samples in flight."""
        started = time.monotonic()
        ids, self.restarted = list(dict.fromkeys(self.restarted)), []
        self._wire(ids, started + self.config.startup_timeout)
        self.abandoned.extend(dropped)
        for sample in dropped:
            for peer in self.peers.values():
                peer.send(wire.encode(wire.DROP, sample))
        self.log.info(
            "wired back in after %.3f s; dropped %s, replaying", time.monotonic() - started, dropped
        )
        self.run.append_metrics({"event": "recovered", "dropped": dropped, "resumed": time.time()})

    # -- samples --------------------------------------------------------------------------------

    def _launch(self, flights: list[Flight]) -> list[int]:
        """Send batches' inputs to the sensors under fresh sample ids: batches of one size as one group,
        a frame per sensor (one batch: the single-sample frame)."""
        ids: list[int] = []
        for _, same_size in itertools.groupby(flights, key=lambda flight: len(flight.rows)):
            group = list(same_size)
            samples = list(range(self.sample + 1, self.sample + 1 + len(group)))
            self.sample += len(group)
            field = samples[0] if len(samples) == 1 else samples
            x = np.concatenate([flight.x for flight in group]) if len(group) > 1 else group[0].x
            debug = self.log.isEnabledFor(DEBUG)
            for nid, column in zip(self.inputs, x.T):
                if debug:
                    self._debug_group("send", group[0].kind, samples, f"to={nid}", column)
                self.sensors[nid].send(wire.encode(group[0].kind, field, 0, wire.payload(column)))
            ids.extend(samples)
        return ids

    def _debug_group(self, verb: str, kind: int, samples: list[int], peer: str, batch: np.ndarray) -> None:
        """A frame for a group as one line per sample, as the neurons log it."""
        size = len(batch) // len(samples)
        for i, sample in enumerate(samples):
            self._debug_hop(verb, kind, sample, peer, batch[i * size : (i + 1) * size])

    def _debug_hop(self, verb: str, kind: int, sample: int, peer: str, value: np.ndarray | bytes) -> None:
        """The coordinator's end of a synapse, in the neurons' words, so `exmachina trace` sees it."""
        self.log.debug("%s %s sample=%d %s value=%s", verb, wire.NAMES[kind], sample, peer, wire.show(value))

    def stream(self, batches: Iterable[Flight], in_flight: int) -> Iterator[Flight]:
        """Keep up to `in_flight` batches in the network; yield each as it completes: a forward-only
        batch when its outputs are in, a learning one when every input neuron has sent its error back
        (every weight has moved). Batches launched together travel as a group, a frame per link, and
        complete together: the next group starts with the same weights in every neuron, so a run is
        the same for a seed whatever the timing. After a restart or a stall, the batches in flight are
        dropped everywhere and sent again under new ids."""
        waiting = iter(batches)
        flights: dict[int, Flight] = {}
        stalls = 0
        timeout = self.config.training.stall_timeout
        deadline = time.monotonic() + timeout
        while True:
            fresh = list(itertools.islice(waiting, in_flight - len(flights)))
            flights.update(zip(self._launch(fresh), fresh))
            if not flights:
                return
            try:
                message = self._receive(deadline)
            except Stalled as exc:
                stalls += 1
                if stalls >= MAX_REPLAYS:
                    raise
                self.log.warning("samples %s stalled (%s): dropping and replaying", list(flights), exc)
                message = None  # replayed as after a restart
            if message is None or type(message) is Restart:
                flights = self._replay(flights)
                deadline = time.monotonic() + timeout
                continue
            moved = self._take(flights, message)
            if moved:
                deadline = time.monotonic() + timeout
            for sample in moved:
                if flights[sample].done(len(self.inputs)):
                    yield flights.pop(sample)

    def _replay(self, flights: dict[int, Flight]) -> dict[int, Flight]:
        """Drop the batches in flight everywhere (wiring restarted neurons back in), send them again."""
        self.recover(list(flights))
        fresh = [flight.restart() for flight in flights.values()]
        return dict(zip(self._launch(fresh), fresh))

    def _take(self, flights: dict[int, Flight], message: wire.Message) -> list[int]:
        """The samples in flight a message moved on, in its order (the output errors of those whose
        outputs are now all in are sent, a frame per output neuron); none, and the message is put
        aside, if it was not for any."""
        moved: list[int] = []
        if not isinstance(message, SYNAPSE):
            self._aside(message)
            return moved
        outputs, inputs = len(self.outputs), len(self.inputs)
        for sample, data in wire.parts(message):
            flight = flights.get(sample)
            if flight is not None and flight.take(message, data, outputs, inputs):
                moved.append(sample)
        if not moved:
            self._aside(message)
            return moved
        if self.log.isEnabledFor(DEBUG):
            for one in wire.singles(message):
                self._debug_hop("recv", one.kind, one.sample, f"sender={one.sender}", one.payload)
        answer = [s for s in moved if flights[s].kind == wire.FORWARD and flights[s].output is not None]
        answer = [s for s in answer if not flights[s].errors_sent]
        if answer:
            self._send_errors([(s, flights[s]) for s in answer])
        return moved

    def _send_errors(self, ready: list[tuple[int, Flight]]) -> None:
        """The output errors of batches whose outputs are all in: one frame per output neuron."""
        samples = [sample for sample, _ in ready]
        gradient = np.concatenate([self.loss.grad(_output(f), f.y.T) for _, f in ready], axis=1)
        field = samples[0] if len(samples) == 1 else samples
        debug = self.log.isEnabledFor(DEBUG)
        for nid, row in zip(self.outputs, gradient):
            if debug:
                self._debug_group("send", wire.BACKWARD, samples, f"to={nid}", row)
            self.error_links[nid].send(wire.encode(wire.BACKWARD, field, 0, wire.payload(row)))
        for _, flight in ready:
            flight.errors_sent = True

    def evaluate(self, data: Dataset) -> tuple[float, float, np.ndarray]:
        """(mean loss, accuracy, outputs) of a forward-only pass: nothing learns, so rows travel
        EVAL_BATCH to a message whatever the training batch size."""
        chunks = [np.arange(i, min(i + EVAL_BATCH, len(data))) for i in range(0, len(data), EVAL_BATCH)]
        batches = (Flight(rows, data.inputs[rows], data.targets[rows], wire.INFER) for rows in chunks)
        outputs = np.zeros(data.targets.shape)
        for flight in self.stream(batches, self.config.training.max_in_flight):
            assert flight.output is not None, "a flight is done once its outputs are in"
            outputs[flight.rows] = flight.output.T
        losses = self.loss.value(outputs.T, data.targets.T)
        return float(np.mean(losses)), accuracy(outputs, data.targets), outputs

    def collect(self, kind: int, request: int) -> Parameters:
        """Every weight and bias as the neurons report them (SNAPSHOT), also saved (CHECKPOINT); asked
        again of every neuron after a restart."""
        while True:
            parameters = self._collect(kind, request, self.config.training.stall_timeout)
            if type(parameters) is not Restart:
                return parameters
            self.recover([])

    def _collect(self, kind: int, request: int, timeout: float) -> Parameters | Restart:
        """One round of SNAPSHOT or CHECKPOINT and its STATE answers; the Restart, when a neuron
        restarted meanwhile."""
        for peer in self.peers.values():
            peer.send(wire.encode(kind, request))
        sizes = self.config.layer_sizes
        axons = [np.zeros((sizes[i], sizes[i + 1])) for i in range(len(sizes) - 1)]
        biases = [np.zeros(s) for s in sizes]
        pending = set(self.peers)
        deadline = time.monotonic() + timeout
        traffic: list[wire.Message] = []  # synapse messages of batches in flight: theirs, kept for later
        try:
            while pending:
                message = self._receive(deadline)
                if type(message) is Restart:
                    return message
                if isinstance(message, SYNAPSE):
                    traffic.append(message)
                elif type(message) is wire.State and message.request == request and message.neuron in pending:
                    pending.discard(message.neuron)
                    layer = self.layer_of[message.neuron]
                    index = self.layers[layer].index(message.neuron)
                    biases[layer][index] = message.bias
                    if layer < len(sizes) - 1:
                        axons[layer][index] = message.weights
                else:
                    self._aside(message)
        finally:
            self.backlog.extendleft(reversed(traffic))
        return of_config(self.config, axons, biases)

    def checkpoint(self) -> Parameters:
        """Every neuron saves itself at the current count, then the coordinator saves its position."""
        parameters = self.collect(wire.CHECKPOINT, self.position.updates)
        self._save_position(self.position.updates)
        return parameters

    def _save_position(self, count: int) -> None:
        checkpoints.save(self.run.path, COORDINATOR, count, self.position.state(), self.kept, self.keep)

    def _final_checkpoint(self) -> Parameters | None:
        """The checkpoint on a stop: a single short try, as the neurons may be going down too; None if
        they did not all answer."""
        count = self.position.updates
        try:
            parameters = self._collect(wire.CHECKPOINT, count, STOP_GRACE_S)
        except (Stalled, Stopped):
            return None
        if type(parameters) is Restart:
            return None
        self._save_position(count)
        return parameters

    def publish(self, parameters: Parameters | None = None) -> None:
        """Live state for the viewer: the neurons' own weights and the latest predictions."""
        parameters = parameters or self.collect(wire.SNAPSHOT, -self.sample)  # never a checkpoint count
        parameters.save(self.run.snapshot)
        p = self.position
        write_json(
            self.run.predictions,
            {
                "epoch": p.epoch + (1 if p.index else 0),
                "samples": p.samples,
                "updates": p.updates,
                "time": time.time(),
                "recent": list(self.recent_predictions),
            },
        )

    # -- the whole run --------------------------------------------------------------------------

    def _batches(self, train: Dataset, order: np.ndarray) -> Iterator[Flight]:
        """The rest of this epoch's order, a batch at a time; stops early when a stop is asked."""
        size = self.config.training.batch_size
        for start in range(self.position.index, len(order), size):
            if self.stop_requested_at is not None:
                return
            rows = order[start : start + size]
            yield Flight(rows, train.inputs[rows], train.targets[rows], wire.FORWARD)

    def _learnt(self, flight: Flight) -> None:
        """Book one completed batch: scores, position, and the periodic checkpoint and snapshot."""
        c, p, output = self.config, self.position, flight.output
        assert output is not None, "a flight is done once its outputs are in"
        losses = self.loss.value(output, flight.y.T)
        if c.training.nan_policy == "stop" and not np.all(np.isfinite(losses)):
            raise Diverged(
                f"the loss is {losses[~np.isfinite(losses)][0]} at epoch {p.epoch + 1}, "
                f"update {p.updates + 1}"
            )
        predicted, wanted = predictions(output.T), predictions(flight.y)
        for row, loss, pred, want, x, out in zip(flight.rows, losses, predicted, wanted, flight.x, output.T):
            p.losses.append(float(loss))
            p.correct.append(bool(pred == want))
            self.recent_predictions.append(
                {
                    "row": int(row),
                    "input": x.tolist(),
                    "output": out.tolist(),
                    "predicted": int(pred),
                    "target": int(want),
                }
            )
        p.recent = (p.recent + p.correct[-len(flight.rows) :])[-RECENT:]
        p.index += len(flight.rows)
        p.samples += len(flight.rows)
        p.updates += 1
        if c.runtime.checkpoint_every and p.updates % c.runtime.checkpoint_every == 0:
            self._save_position(p.updates)
        if c.runtime.snapshot_every and p.updates % c.runtime.snapshot_every == 0:
            self.publish()

    def _epoch_end(self, last: bool, improved: bool) -> Parameters | None:
        """The cut an epoch's end makes: only the last epoch's, or every one with `checkpoint_every`
        0. Otherwise the cuts every `checkpoint_every` updates are enough, and a cut per epoch would
        cost more than the learning when epochs are short (a few rows, or one update an epoch).
        Returns the parameters when it collected them (a cut, or a new best)."""
        parameters = self.checkpoint() if last or not self.config.runtime.checkpoint_every else None
        if improved:
            parameters = parameters or self.collect(wire.SNAPSHOT, -self.sample)
            parameters.save(self.run.path / "best.npz")
        return parameters

    def train(self, train: Dataset, holdout: Dataset | None, progress: Progress) -> dict:
        """Epochs until the last, the target loss, a stop or a stall; then the model and the summary."""
        p = self.position
        started, first = time.monotonic(), p.samples
        status = error = ""
        try:
            while not status and p.epoch < self.config.training.epochs:
                status = self._epoch(train, holdout, progress, started)
        except Stopped:
            status = "stopped"
        except Stalled as exc:
            status = "stalled"
            self.log.error("samples stalled %d times: %s", MAX_REPLAYS, exc)
        except Diverged as exc:
            status, error = "diverged", str(exc)
            self.log.error("training diverged: %s", exc)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            status, error = "disk_full", str(exc)
            self.log.error("disk full: %s", exc)
        status = status or "completed"
        if status == "stopped":
            self.log.info("stop requested at update %d: checkpointing what the neurons know", p.updates)
        train_time = time.monotonic() - started
        summary = {
            "status": status,
            "epochs": p.epoch,
            "samples": p.samples,
            "updates": p.updates,
            "train_time_s": train_time,
            "samples_per_s": (p.samples - first) / train_time if train_time else 0.0,
            "restarts": self.restarts,
        }
        if error:
            summary["error"] = error
        self._finish(summary, train, holdout)
        return summary

    def _epoch(self, train: Dataset, holdout: Dataset | None, progress: Progress, started: float) -> str:
        """One epoch: learn, score, cut, report. Returns how training ends after it, if it does:
        "stopped" when a stop cut it short, "completed" when it reached the target loss, else ""."""
        t, p = self.config.training, self.position
        epoch_started, epoch_first = time.monotonic(), p.samples
        order = epoch_order(self.config.seed, p.epoch, len(train), t.shuffle)
        for flight in self.stream(self._batches(train, order), t.max_in_flight):
            self._learnt(flight)
        if self.stop_requested_at is not None:
            return "stopped"
        elapsed = time.monotonic() - epoch_started
        record: dict[str, Any] = {
            "event": "epoch",
            "epoch": p.epoch + 1,
            "loss": float(np.mean(p.losses)),
            "accuracy": float(np.mean(p.correct)),
            "recent_accuracy": float(np.mean(p.recent)),
            "samples": p.samples,
            "samples_per_s": (p.samples - epoch_first) / elapsed if elapsed > 0 else 0.0,
            "elapsed": time.monotonic() - started,
        }
        if holdout is not None:
            record["holdout_loss"], record["holdout_accuracy"], _ = self.evaluate(holdout)
        p.epoch, p.index, p.losses, p.correct = p.epoch + 1, 0, [], []
        improved = holdout is not None and (p.best is None or record["holdout_accuracy"] > p.best[0])
        if improved:
            p.best = [record["holdout_accuracy"], p.epoch]
        reached = t.target_loss is not None and record["loss"] < t.target_loss
        parameters = self._epoch_end(last=reached or p.epoch >= t.epochs, improved=improved)
        self.run.append_metrics(record)
        if parameters is not None or not self.config.runtime.snapshot_every:
            self.publish(parameters)
        progress.epoch(record)
        if reached:
            self.log.info("target loss %.4g reached after epoch %d", t.target_loss, p.epoch)
            return "completed"
        return ""

    def _finish(self, summary: dict, train: Dataset, holdout: Dataset | None) -> None:
        """The model a run leaves: what the neurons know on a stop, the final weights (and scores)
        once complete; nothing after a stall."""
        if summary["status"] == "stopped":
            # The batches in flight finished (or the neurons are going down too): a short, bounded try.
            self.stop_requested_at = None
            parameters = self._final_checkpoint()
            if parameters is None:
                self.log.warning("neurons did not answer the final checkpoint: model.npz not written")
            else:
                parameters.save(self.run.model)
        elif summary["status"] == "completed":
            parameters = self.collect(wire.SNAPSHOT, -self.sample - 1)
            if self.config.training.nan_policy == "stop" and not all_finite(parameters):
                summary.update(status="diverged", error="a weight is not finite at the end of training")
                return
            parameters.save(self.run.model)
            summary["final_loss"], summary["accuracy"], _ = self.evaluate(train)
            if holdout is not None:
                summary["holdout_loss"], summary["holdout_accuracy"], _ = self.evaluate(holdout)
                summary["best_holdout_accuracy"], summary["best_epoch"] = self.position.best or (None, None)


def coordinate(
    config: Config,
    site: Site,
    train: Dataset,
    holdout: Dataset | None,
    position: dict | None = None,
    keys: curve.Keypair | None = None,
) -> None:
    """Process entry point of the coordinator. `position`: where a resumed run takes up; `keys`: its
    own CURVE keypair when the run's links are encrypted."""
    np.seterr(all="ignore")  # a non-finite loss is reported once, by training.nan_policy
    run = RunDir(site.run_dir)
    log = open_log(COORDINATOR, run.log(COORDINATOR), site.log_level, site.log_max_bytes, site.log_backups)
    log.info(
        "start pid=%d: %d training rows, %s held out",
        os.getpid(),
        len(train),
        len(holdout) if holdout is not None else "none",
    )
    coordinator = Coordinator(config, site, log, keys)
    if position is not None:
        coordinator.position = Position(
            **{k: v for k, v in position.items() if k in Position.__annotations__}
        )
        log.info(
            "resuming at epoch %d, row %d, update %d",
            coordinator.position.epoch + 1,
            coordinator.position.index,
            coordinator.position.updates,
        )
    signal.signal(signal.SIGTERM, lambda *_: coordinator.request_stop())
    progress = Progress(config.training.epochs)
    started = time.monotonic()
    summary: dict = {"status": "failed"}
    try:
        coordinator.connect()
        summary = coordinator.train(train, holdout, progress)
    except Stopped:
        summary = {"status": "stopped", "epochs": 0, "samples": 0}
    except Stalled as exc:
        log.error("start-up stalled: %s", exc)
        summary = {"status": "stalled", "epochs": 0, "samples": 0}
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        log.error("disk full: %s", exc)
        summary = {"status": "disk_full", "error": str(exc), "epochs": 0, "samples": 0}
    finally:
        progress.close()
        summary.update(
            wall_time_s=time.monotonic() - started,
            run_dir=str(run.path),
            neurons=len(coordinator.all_ids),
            dropped_messages=coordinator.dropped,
        )
        _write_summary(run, summary, log)
        coordinator.close()
        close_log(log)
    if summary["status"] == "stalled":
        raise SystemExit(3)
    if summary["status"] == "disk_full":
        raise SystemExit(NO_SPACE_EXIT)


ADDRESS_FILE = "coordinator.address"
ADDRESS_POLL_S = 0.02  # the first look again; then twice as long each time, up to ADDRESS_POLL_MAX_S
ADDRESS_POLL_MAX_S = 0.5  # thousands of neurons waiting must not crowd out the coordinator they wait for
# A neuron waits this long: the coordinator is the supervisor's last child, started after every
# neuron, so a large network on few cores may take minutes; should it die, the run ends anyway.
NEURON_ADDRESS_WAIT_S = 600.0


def publish_address(run_dir: str, endpoint: str) -> None:
    """Tell the run where the coordinator's tcp inbox is bound: written aside, then renamed."""
    path = Path(run_dir) / ADDRESS_FILE
    tmp = path.with_name(f".{ADDRESS_FILE}.tmp")
    tmp.write_text(endpoint + "\n")
    os.replace(tmp, path)


def await_address(run_dir: str, timeout: float = STARTUP_TIMEOUT_S) -> str:
    """The coordinator's bound tcp endpoint, once it has published it."""
    path = Path(run_dir) / ADDRESS_FILE
    deadline, pause = time.monotonic() + timeout, ADDRESS_POLL_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: the coordinator did not bind within {timeout:g} s")
        time.sleep(pause)
        pause = min(2 * pause, ADDRESS_POLL_MAX_S)
    return path.read_text().strip()


def serve_neuron(spec: NeuronSpec, site: Site, keys: curve.Keypair | None = None) -> None:
    """A neuron of a tcp run: the coordinator binds a port of its own choosing (`tcp://host:*`),
    never one picked for it and released, which a neuron's own bind could take first; so a neuron
    starts by reading the address the coordinator published."""
    try:
        endpoint = await_address(site.run_dir, NEURON_ADDRESS_WAIT_S)
    except TimeoutError as exc:
        print(f"exmachina: neuron {spec.id}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    serve(spec, dataclasses.replace(site, coordinator=endpoint), keys)


def all_finite(parameters: Parameters) -> bool:
    """Every weight and bias a finite number."""
    return all(np.all(np.isfinite(a)) for a in [*parameters.axons, *parameters.biases])


def _write_summary(run: RunDir, summary: dict, log: Log) -> None:
    """summary.json; on a full disk the status goes out by the exit code instead."""
    try:
        run.write_summary(summary)
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        summary.update(status="disk_full", error=str(exc))
    log.info("end: %s", summary)


def _output(flight: Flight) -> np.ndarray:
    """A batch's outputs, which are all in once its errors are due."""
    assert flight.output is not None
    return flight.output
