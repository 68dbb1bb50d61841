"""One neuron, one process.

Dendrites gather what the input synapses bring, the soma fires, the axon carries the activity on,
weighted once per outgoing synapse (the weights live on the sender's axon, as in the original).
Errors come back along the axon and leave along the dendrites. `Neuron` is the nine steps and no
sockets; `serve` is the process around it: sockets, wiring, the event loop, logs and signals.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import zmq

from exmachina.model.activations import ACTIVATIONS
from exmachina.model.learning import (
    SGD,
    Optimizer,
    axon_gradient,
    bias_gradient,
    descend,
    error,
    fire,
    moments,
    rate_at,
)
from exmachina.model.topology import COORDINATOR, INBOX, NeuronSpec, socket_name
from exmachina.network import curve, transport, wire
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import RunDir, Site
from exmachina.rundir.logs import DEBUG, Log, close_log, open_log

# Recently dropped samples: their stragglers (still in flight when DROP came) are discarded.
REMEMBER_DROPPED = 64

# Samples a neuron keeps half-gathered at once; beyond this the oldest is forgotten (and logged), so
# a flood of stray sample ids can never grow a neuron's memory without bound.
MAX_PENDING = 256

# Up to this many values a batch's stats are summed in plain Python, beyond it in NumPy.
SMALL_BATCH = 32


class Link(Protocol):
    """Where a neuron sends a synapse's frames: a PUSH socket (the rehearsal's stand-in in the zygote)."""

    def send(self, data: bytes, flags: int = 0) -> Any: ...

    def close(self) -> None: ...


class Unexpected(ValueError):
    """A well-formed message that makes no sense now: duplicate, unknown synapse or sample."""


class Interrupted(Exception):
    """SIGTERM arrived while the neuron was waiting for a message."""


class Gathering:
    """One batch per synapse for one sample, kept in synapse order whatever order they arrive in.
    The frames' bytes are kept as they came and read as one array when the last is in: one NumPy
    call per sample instead of two per message."""

    __slots__ = ("missing", "parts", "size")

    def __init__(self, synapses: int, size: int) -> None:
        self.parts: list[bytes | None] = [None] * synapses
        self.size = size  # bytes per synapse: 8 per sample of the batch
        self.missing = synapses

    def put(self, synapse: int, data: bytes) -> bool:
        """Store one synapse's batch; True once every synapse has reported."""
        if not 0 <= synapse < len(self.parts):
            raise Unexpected(f"no synapse {synapse} (have {len(self.parts)})")
        if self.parts[synapse] is not None:
            raise Unexpected(f"synapse {synapse} already reported")
        if len(data) != self.size:
            raise Unexpected(f"{len(data)} bytes where this sample's batches are {self.size}")
        self.parts[synapse] = data
        self.missing -= 1
        return self.missing == 0

    def values(self) -> np.ndarray:
        """(synapses, batch)"""
        return wire.values(b"".join(cast("list[bytes]", self.parts))).reshape(len(self.parts), -1)


class Pending(dict):
    """Gatherings by key, bounded by MAX_PENDING (oldest forgotten first). The key is the sample id,
    or the tuple of ids of a group that travels in one frame per synapse."""

    def __init__(self, synapses: int, log: Log, what: str) -> None:
        super().__init__()
        self.synapses, self.log, self.what = synapses, log, what

    def put(self, sample: int | tuple[int, ...], synapse: int, data: bytes) -> np.ndarray | None:
        """The (synapses, batch) array once this was its last synapse, else None; a group's batches
        lie side by side on the second axis."""
        gathering = self.get(sample)
        if gathering is None:
            if len(self) >= MAX_PENDING:
                oldest = next(iter(self))
                del self[oldest]
                self.log.warning("forgot half-gathered %s of sample %s (too many pending)", self.what, oldest)
            wire.batch_size(data)  # raises for a payload that is not whole float64s
            gathering = self[sample] = Gathering(self.synapses, len(data))
        if gathering.put(synapse, data):
            del self[sample]
            return gathering.values()
        return None

    def forget(self, sample: int) -> None:
        """Drop the gathering of a sample, alone or in a group."""
        for key in [k for k in self if k == sample or (type(k) is tuple and sample in k)]:
            del self[key]


class Dendrites:
    """The input synapses: activities come in, errors go back out."""

    def __init__(self, peers: tuple[str, ...], log: Log) -> None:
        self.peers, self.log = peers, log
        self.debug = log.isEnabledFor(DEBUG)  # the level is set once, at start
        self.incoming = Pending(len(peers), log, "activities")
        self.links: list[Link] = []  # one PUSH back to each upstream peer, in synapse order

    def send_back(self, sample: int | tuple[int, ...], delta: np.ndarray, me: int) -> int:
        """The error to every input synapse: one frame each, for one sample or a whole group."""
        if self.debug:  # logged before sending, so a send precedes its recv
            for peer in self.peers:
                for one, part in _per_sample(sample, delta):
                    self.log.debug("send BACKWARD sample=%d to=%s value=%s", one, peer, wire.show(part))
        frame = wire.encode(wire.BACKWARD, _field(sample), me, wire.payload(delta))
        for link in self.links:
            link.send(frame)
        return len(self.links)


class Axon:
    """The outgoing synapses, each with its own weight, and the optimizer's moments of those weights."""

    def __init__(
        self, weights: np.ndarray, plastic: bool, peers: tuple[str, ...], log: Log, optimizer: Optimizer = SGD
    ) -> None:
        self.weights, self.plastic, self.peers, self.log = weights, plastic, peers, log
        self.optimizer = optimizer
        self.moments = moments(optimizer, weights) if plastic else []
        self.debug = log.isEnabledFor(DEBUG)
        self.errors = Pending(len(weights), log, "errors")
        self.links: list[Link] = []  # one PUSH to each downstream peer, in synapse order

    def transmit(self, kind: int, sample: int | tuple[int, ...], activity: np.ndarray, me: int) -> int:
        """The weighted activity to every output synapse: one frame each, for one sample or a group."""
        weighted = np.multiply.outer(self.weights, activity)  # one batch per outgoing synapse
        if self.debug:
            name = wire.NAMES[kind]
            for peer, value in zip(self.peers, weighted):
                for one, part in _per_sample(sample, value):
                    self.log.debug("send %s sample=%d to=%s value=%s", name, one, peer, wire.show(part))
        data, size = wire.payload(weighted), 8 * weighted.shape[1]  # one buffer, sliced per synapse
        field = _field(sample)
        for i, link in enumerate(self.links):
            link.send(wire.encode(kind, field, me, data[i * size : (i + 1) * size]))
        return len(self.links)

    def learn(self, gradient: np.ndarray, rate: float, step: int) -> None:
        if self.plastic:
            descend(self.weights, gradient, rate, self.optimizer, self.moments, step)


class Neuron:
    """The nine steps of the original, as message handlers."""

    def __init__(self, spec: NeuronSpec, log: Log) -> None:
        self.spec = spec
        self.log = log
        self.debug = log.isEnabledFor(DEBUG)
        self.activation = ACTIVATIONS[spec.activation]
        self.bias = np.array(spec.bias)  # 0-d array: updated in place like the axon
        self.dendrites = Dendrites(spec.upstream, log)
        self.axon = Axon(spec.axon.astype(float), spec.plastic_axon, spec.downstream, log, spec.optimizer)
        self.bias_moments = moments(spec.optimizer, self.bias) if spec.learn_bias else []
        self.sent = 0
        # sample -> (net, activity, the axon it was sent with), until its errors are back: with several
        # samples in flight, a sample's error uses the weights it saw going forward (weight stashing)
        self.fired: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.dropped: dict[int, None] = {}  # the last REMEMBER_DROPPED, oldest first
        self.updates = self.reported_updates = spec.updates
        self.activity_sum = self.error_sum = 0.0

    def on_activity(self, kind: int, sample: int, synapse: int, data: bytes) -> None:
        """An activity (a batch of float64, as the wire carries it) from one input synapse."""
        self._on_activity(kind, sample, (sample,), synapse, data)

    def on_activities(self, kind: int, samples: list[int], synapse: int, data: bytes) -> None:
        """The activities of a group of samples from one input synapse, their batches back to back.
        The group fires as one, and goes on as one frame per output synapse."""
        self._on_activity(kind, tuple(samples), samples, synapse, data)

    def _on_activity(
        self, kind: int, key: int | tuple, samples: list | tuple, synapse: int, data: bytes
    ) -> None:
        for sample in samples:
            if kind == wire.FORWARD and sample in self.fired:
                raise Unexpected(f"sample {sample} already fired")
            if sample in self.dropped:
                raise Unexpected(f"sample {sample} was dropped")
        inputs = self.dendrites.incoming.put(key, synapse, data)  # 1. wait for every input synapse
        if inputs is None:
            return
        net, activity = fire(inputs.sum(axis=0), self.bias, self.activation)  # 2. own activity
        if kind == wire.FORWARD:
            sent_with = self.axon.weights.copy()  # the weights this forward used, for its errors
            size = len(net) // len(samples)
            for i, sample in enumerate(samples):
                if len(self.fired) >= MAX_PENDING:  # stray traffic must not grow memory without bound
                    self.forget(next(iter(self.fired)))
                part = slice(i * size, (i + 1) * size)
                self.fired[sample] = (net[part], activity[part], sent_with)
                self.activity_sum += _mean(activity[part])
        self.sent += self.axon.transmit(kind, key, activity, self.spec.index)  # 3-4. weight, send on

    def on_error(self, sample: int, synapse: int, data: bytes) -> bool:
        """An error from one downstream synapse; True once this sample's update is done."""
        return self._on_error(sample, (sample,), synapse, data) == 1

    def on_errors(self, samples: list[int], synapse: int, data: bytes) -> int:
        """The errors of a group of samples from one downstream synapse; the updates done (the whole
        group's, in its order, once every synapse has reported; else 0)."""
        return self._on_error(tuple(samples), samples, synapse, data)

    def _on_error(self, key: int | tuple, samples: list | tuple, synapse: int, data: bytes) -> int:
        for sample in samples:
            if sample not in self.fired:
                raise Unexpected(f"error for sample {sample}, which this neuron has not fired")
        errors = self.axon.errors.put(key, synapse, data)  # 5. wait for every downstream error
        if errors is None:
            return 0
        size = errors.shape[1] // len(samples)
        parts = [errors[:, i * size : (i + 1) * size] for i in range(len(samples))]
        fired = [self.fired.pop(sample) for sample in samples]
        # 6. own error, with the weights each sample saw going forward (weight stashing)
        deltas = [error(net, self.activation, sent_with, e) for (net, _, sent_with), e in zip(fired, parts)]
        delta = deltas[0] if len(deltas) == 1 else np.concatenate(deltas)
        self.sent += self.dendrites.send_back(key, delta, self.spec.index)  # 7. back to the inputs
        if self.spec.step_once:
            self._learn(samples, np.concatenate([a for _, a, _ in fired]), errors, delta)
        else:
            for sample, (_, activity, _), e, d in zip(samples, fired, parts, deltas):
                self._learn((sample,), activity, e, d)
        return len(samples)

    def _learn(
        self, samples: Sequence[int], activity: np.ndarray, errors: np.ndarray, delta: np.ndarray
    ) -> None:
        """One update by the mean gradient of `samples`: one sample, as online (the group's samples
        each move the weights in turn), or a whole group at once (`in_flight_step: once`). The count
        goes on by one per sample either way; the rate is that of the first."""
        gradient = axon_gradient(activity, errors)  # 8. gradient of each outgoing weight
        rate = rate_at(self.spec.schedule, self.spec.learning_rate, self.updates)
        self.updates += len(samples)
        step = self.updates
        self.axon.learn(gradient, rate, step)  # 9. update the weights (and the bias)
        if self.spec.learn_bias:
            descend(self.bias, bias_gradient(delta), rate, self.spec.optimizer, self.bias_moments, step)
        self.error_sum += len(samples) * _mean(delta, magnitude=True)
        if self.debug:
            for sample, part in _per_sample(tuple(samples), delta):
                self.log.debug(
                    "update sample=%d delta=%s bias=%.6g weights=%s",
                    sample,
                    wire.show(part),
                    self.bias,
                    _fmt(self.axon.weights),
                )

    def forget(self, sample: int) -> None:
        """Drop every trace of a sample that will never complete (it is being replayed)."""
        self.fired.pop(sample, None)
        self.dendrites.incoming.forget(sample)
        self.axon.errors.forget(sample)
        self.dropped[sample] = None
        if len(self.dropped) > REMEMBER_DROPPED:
            del self.dropped[next(iter(self.dropped))]

    def restore(self, state: dict) -> None:
        """Take up the weights, bias, optimizer moments and count of a checkpoint (after a restart)."""
        self.axon.weights[:] = checkpoints.weights_of(state)
        self.bias[...] = state["bias"]
        weight_moments, bias_moments = checkpoints.moments_of(state)
        if len(weight_moments) != len(self.axon.moments) or len(bias_moments) != len(self.bias_moments):
            raise checkpoints.CheckpointError(
                f"checkpoint at update {state['updates']} holds {len(weight_moments)}+{len(bias_moments)} "
                f"moments, the {self.spec.optimizer.name} optimizer keeps "
                f"{len(self.axon.moments)}+{len(self.bias_moments)}"
            )
        for kept, saved in zip([*self.axon.moments, *self.bias_moments], [*weight_moments, *bias_moments]):
            kept[...] = saved
        self.updates = self.reported_updates = state["updates"]


def _mean(batch: np.ndarray, magnitude: bool = False) -> float:
    """A batch's mean (of magnitudes) for the stats: in plain Python for a few values, where NumPy's
    call overhead outweighs the sum; in NumPy for many, where building a list of floats would."""
    if len(batch) <= SMALL_BATCH:
        values = batch.tolist()
        return sum(map(abs, values) if magnitude else values) / len(values)
    return float(np.abs(batch).mean() if magnitude else batch.mean())


def _field(sample: int | tuple[int, ...]) -> int | list[int]:
    """The sample field of a synapse frame: the id, or the group's ids as a list."""
    return list(sample) if isinstance(sample, tuple) else sample


def _per_sample(sample: int | tuple[int, ...], batch: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(sample, its part of the batch) for one sample or each of a group (for the debug log)."""
    samples = sample if isinstance(sample, tuple) else (sample,)
    size = len(batch) // len(samples)
    return [(one, batch[i * size : (i + 1) * size]) for i, one in enumerate(samples)]


def _fmt(values: np.ndarray, limit: int = 8) -> str:
    shown = " ".join(f"{v:+.4f}" for v in values[:limit])
    return f"[{shown}{' ...' if len(values) > limit else ''}]"


def serve(
    spec: NeuronSpec,
    site: Site,
    keys: curve.Keypair | None = None,
    started: Callable[[NeuronProcess], None] | None = None,
) -> None:
    """Process entry point: bind, say hello, get wired, then handle messages until told to stop.
    `keys`: this neuron's own CURVE keypair when the run's links are encrypted; `started`: told the
    process once it is bound (a Ray actor keeps it to pass on a stop)."""
    np.seterr(all="ignore")  # a diverging run is the coordinator's to report (training.nan_policy)
    log = open_log(
        spec.id, RunDir(site.run_dir).log(spec.id), site.log_level, site.log_max_bytes, site.log_backups
    )
    log.info(
        "start pid=%d activation=%s bias=%+.4f learn_bias=%s axon=%s",
        os.getpid(),
        spec.activation,
        spec.bias,
        spec.learn_bias,
        _fmt(spec.axon),
    )
    try:
        process = NeuronProcess(spec, site, log, keys)
    except Exception as exc:  # e.g. a damaged checkpoint: the traceback goes to the log, one line out
        log.exception("crashed on start")
        close_log(log)
        print(f"exmachina: neuron {spec.id} crashed on start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if started is not None:
        started(process)
    try:
        process.run()
    finally:
        process.close()
        log.info("exit")
        close_log(log)


class NeuronProcess:
    """The process around a Neuron: its sockets, its wiring, its event loop, its signals and stats."""

    def __init__(self, spec: NeuronSpec, site: Site, log: Log, keys: curve.Keypair | None = None) -> None:
        self.spec, self.site, self.log, self.keys = spec, site, log, keys
        self.neuron = Neuron(spec, log)
        self.kept = checkpoints.counts(site.run_dir, spec.id)  # listed once; save() keeps it current
        self.restored = self._restore()
        self.received = self.dropped = 0
        self.wired = False  # no stats before: nothing to say, and a thousand starting neurons would
        # queue them for a coordinator that has yet to bind and then must read them all
        self.last_problem = ""
        self.stop_signal: list[int] = []
        self.waiting = False  # blocked in recv: only then may a signal interrupt (see _on_signal)
        if threading.current_thread() is threading.main_thread():  # not so in a Ray actor's thread
            signal.signal(signal.SIGTERM, self._on_signal)
        sockets = len(spec.upstream) + len(spec.downstream) + 2
        self.ctx = transport.context(sockets + (curve.GATEKEEPER_SOCKETS if keys is not None else 0))
        self.gatekeeper = None
        if keys is not None:  # only this neuron's neighbours and the coordinator may link to it
            assert site.public_keys is not None, "a CURVE run names every public key"
            neighbours = {*spec.upstream, *spec.downstream, COORDINATOR}
            self.gatekeeper = curve.Gatekeeper(
                self.ctx, {p: site.public_keys[p] for p in neighbours}, log, site.public_keys
            )
        # Every link into this neuron (activities from upstream, errors from downstream, control from
        # the coordinator) is its own PUSH socket connected to this one PULL: the pipeline pattern's
        # fan-in. One socket means one blocking recv per message and no poller, which is most of
        # what a wakeup costs; the kind of each message says what it is.
        self.inbox, inbox = transport.pull(
            self.ctx, site.transport, site.place, socket_name(spec.id, INBOX), keys
        )
        if self.gatekeeper is not None and keys is not None:
            self.gatekeeper.start(self.inbox)
            log.info(
                "curve: inbox is a CURVE server with public key %s; admits %d peers' keys",
                keys.public.decode(),
                len(self.gatekeeper.admitted),
            )
        self.inbox.setsockopt(zmq.RCVTIMEO, max(1, int(site.stats_interval * 1000)))
        self.endpoints = {INBOX: inbox}
        self.coordinator = self._link(site.coordinator, COORDINATOR, control=True)

    def _link(self, endpoint: str, peer: str, control: bool = False) -> zmq.Socket:
        """A PUSH to a peer's inbox: a CURVE client of that peer's key when the run uses CURVE."""
        linger, reconnect = (
            (transport.CONTROL_LINGER_MS, transport.CONTROL_RECONNECT_MAX_MS)
            if control
            else (transport.SYNAPSE_LINGER_MS, 0)
        )
        server_key = (
            None if self.keys is None or self.site.public_keys is None else self.site.public_keys[peer]
        )
        return transport.push(self.ctx, endpoint, linger, self.keys, server_key, reconnect)

    def _on_signal(self, signum: int, frame: object) -> None:
        """Stop after the message in hand; a neuron blocked in recv is woken at once."""
        self.stop_signal.append(signum)
        if self.waiting:
            raise Interrupted

    def run(self) -> None:
        hello = [wire.VERSION, self.spec.id, os.getpid(), self.endpoints, self.neuron.updates]
        self.coordinator.send(wire.encode(wire.HELLO, *hello))
        self.log.info("bound %s; hello sent", " ".join(f"{k}={v}" for k, v in self.endpoints.items()))
        interval = self.site.stats_interval
        next_stats = time.monotonic() + interval
        running = True
        try:
            while running and not self.stop_signal:
                try:
                    self.waiting = True
                    frame = self.inbox.recv()  # returns at once while frames are queued
                except zmq.Again:  # a quiet stats interval
                    frame = None
                finally:
                    self.waiting = False
                if frame is not None:
                    running = self._handle(frame)
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + interval
                    if self.wired:
                        self._report()
        except Interrupted:
            pass
        if self.stop_signal:
            self.log.info("stop on signal %d", self.stop_signal[0])
        n = self.neuron
        self.log.info(
            "final updates=%d bias=%+.4f axon=%s received=%d sent=%d dropped=%d",
            n.updates,
            float(n.bias),
            _fmt(n.axon.weights),
            self.received,
            n.sent,
            self.dropped,
        )

    def _handle(self, frame: bytes) -> bool:
        """One message, by its kind; False once a STOP arrived."""
        self.received += 1
        try:
            message = wire.decode(frame)
            if self.neuron.debug:
                self._debug_recv(message)
            if type(message) is wire.Error:
                updated = self.neuron.on_error(message.sample, message.sender, message.payload)
                every = self.site.checkpoint_every
                if updated and every and self.neuron.updates % every == 0:
                    self._checkpoint()
            elif type(message) is wire.Activity:
                self.neuron.on_activity(message.kind, message.sample, message.sender, message.payload)
            elif type(message) is wire.Errors:
                self._updated(self.neuron.on_errors(message.samples, message.sender, message.payload))
            elif type(message) is wire.Activities:
                self.neuron.on_activities(message.kind, message.samples, message.sender, message.payload)
            else:
                return self._control(message)
        except (wire.WireError, Unexpected) as exc:
            self.dropped += 1
            self.last_problem = str(exc)
            self.log.warning("dropped message (%s): %r", exc, frame[:64])
        return True

    def _debug_recv(self, message: wire.Message) -> None:
        """A received message in the log: a group as one line per sample, as `exmachina trace` reads."""
        if type(message) is wire.Activities or type(message) is wire.Errors:
            for one in wire.singles(message):
                self.log.debug("recv %s", wire.describe(one))
        else:
            self.log.debug("recv %s", wire.describe(message))

    def _updated(self, count: int) -> None:
        """After a group's `count` updates: a checkpoint if they passed a multiple of checkpoint_every
        (saved at the count the weights stand at, as a restart takes up)."""
        every, updates = self.site.checkpoint_every, self.neuron.updates
        if count and every and updates // every > (updates - count) // every:
            self._checkpoint()

    def _control(self, message: wire.Message) -> bool:
        """A message from the coordinator; False for STOP."""
        match message:
            case wire.Wiring():
                self._wire(message)
            case wire.Snapshot(request=request):
                self._send_state(request)
            case wire.Checkpoint(count=count):
                if count != self.neuron.updates:
                    self.log.warning(
                        "checkpoint asked at update %d, this neuron is at %d", count, self.neuron.updates
                    )
                self._checkpoint()
                self._send_state(count)
            case wire.Drop(sample=sample):
                self.neuron.forget(sample)
                self.log.info("dropped sample %d on request", sample)
            case wire.Stop():
                self.log.info("stop requested")
                return False
            case _:
                raise Unexpected(f"{wire.NAMES[message.kind]} is not a control message")
        return True

    def _wire(self, wiring: wire.Wiring) -> None:
        """Link the synapses where the coordinator says they lead, take up the network's update
        count, and say READY."""
        spec, n = self.spec, self.neuron
        if wiring.version != wire.VERSION:
            raise Unexpected(f"protocol version {wiring.version}, this neuron speaks {wire.VERSION}")
        downstream, upstream = wiring.downstream, wiring.upstream
        if len(downstream) != len(spec.downstream) or len(upstream) != len(spec.upstream):
            raise Unexpected(
                f"wiring for {len(upstream)}->{len(downstream)} synapses, "
                f"need {len(spec.upstream)}->{len(spec.downstream)}"
            )
        for link in n.axon.links + n.dendrites.links:
            link.close()
        n.axon.links = [self._link(ep, peer) for ep, peer in zip(downstream, spec.downstream)]
        n.dendrites.links = [self._link(ep, peer) for ep, peer in zip(upstream, spec.upstream)]
        self.log.info(
            "wired: %d input synapses from %s; %d output synapses to %s",
            len(upstream),
            _peers(spec.upstream),
            len(downstream),
            _peers(spec.downstream),
        )
        if n.updates > wiring.updates:  # a checkpoint of an update the network never counted
            self._restore(at_most=wiring.updates)
        if self.restored or wiring.updates != n.updates:
            self.log.warning(
                "restart: lost %d updates (weights stand at update %d, the network at %d)",
                wiring.updates - n.updates,
                n.updates,
                wiring.updates,
            )
            n.updates = n.reported_updates = wiring.updates
            self.restored = False
        self.wired = True
        self.coordinator.send(wire.encode(wire.READY, spec.id))

    def _restore(self, at_most: int | None = None) -> bool:
        """Take up the newest checkpoint that loads (at `at_most` updates or below), passing over and
        reporting damaged ones; else the spec's weights, the cut the run started from. Whether any
        checkpoint newer than the spec was taken up.

        `at_most`: the network's count. A neuron checkpoints as soon as it has updated, before the
        batch is complete everywhere; killed then, its newest checkpoint holds an update the network
        did not count, and the replayed batch would be learnt twice. An older one is taken instead."""
        n, spec = self.neuron, self.spec

        def damaged(exc: checkpoints.CheckpointError) -> None:
            self.log.warning("%s: using an older checkpoint", exc)
            print(f"exmachina: neuron {spec.id}: {exc}: using an older checkpoint", file=sys.stderr)

        state = checkpoints.newest_readable(self.site.run_dir, spec.id, at_most, damaged)
        if state is None or state["updates"] < spec.updates:
            if at_most is not None:  # back to where the run started, the optimizer's moments at zero
                n.restore(
                    checkpoints.neuron_state(
                        spec.axon,
                        spec.bias,
                        spec.updates,
                        [np.zeros_like(m) for m in n.axon.moments],
                        [0.0 for _ in n.bias_moments],
                    )
                )
            return False
        n.restore(state)
        if state["updates"] == spec.updates:  # the cut a run resumes from: its moments are only here
            return False
        self.log.info(
            "restarted: restored checkpoint at update %d: bias=%+.4f axon=%s",
            state["updates"],
            float(n.bias),
            _fmt(n.axon.weights),
        )
        return True

    def _send_state(self, request: int) -> None:
        n = self.neuron
        state = [float(n.bias), n.axon.weights.tolist(), n.updates]
        self.coordinator.send(wire.encode(wire.STATE, self.spec.id, request, *state))

    def _checkpoint(self) -> None:
        """Save this neuron's state. A full disk is not this neuron's fault: it goes on without this
        checkpoint (the cut it belonged to is incomplete, so a resume takes an older one), and the
        coordinator, whose own writes fail too, stops the run."""
        n = self.neuron
        try:
            checkpoints.save(
                self.site.run_dir,
                self.spec.id,
                n.updates,
                checkpoints.neuron_state(
                    n.axon.weights, float(n.bias), n.updates, n.axon.moments, n.bias_moments
                ),
                self.kept,
            )
        except OSError as exc:
            self.log.warning("checkpoint at update %d not written: %s", n.updates, exc)
            return
        self.log.debug("checkpoint at update %d", n.updates)

    def _report(self) -> None:
        """Periodic stats: a line in the log when something happened, and a STATS message always."""
        n = self.neuron
        done = n.updates - n.reported_updates
        stats = {
            "pid": os.getpid(),
            "time": time.time(),
            "updates": n.updates,
            "received": self.received,
            "sent": n.sent,
            "dropped": self.dropped,
            "pending": len(n.dendrites.incoming) + len(n.axon.errors),
            "activity_mean": n.activity_sum / done if done else None,
            "error_mean": n.error_sum / done if done else None,
            "bias": float(n.bias),
            "weights": n.axon.weights.tolist()[:16],
            "last_problem": self.last_problem,
        }
        self.coordinator.send(wire.encode(wire.STATS, self.spec.id, stats))
        if done:
            self.log.info(
                "stats updates=%d activity_mean=%.4f |error|_mean=%.4g bias=%+.4f axon=%s "
                "received=%d dropped=%d",
                n.updates,
                stats["activity_mean"],
                stats["error_mean"],
                stats["bias"],
                _fmt(n.axon.weights),
                self.received,
                self.dropped,
            )
            n.activity_sum = n.error_sum = 0.0
            n.reported_updates = n.updates

    def close(self) -> None:
        if self.gatekeeper is not None:  # its thread uses sockets of the context: it goes first
            self.gatekeeper.stop()
        self.ctx.destroy(linger=0)
        transport.release(list(self.endpoints.values()))


def _peers(ids: tuple[str, ...]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{ids[0]} ... {ids[-1]}"
