"""One neuron, one process.

Dendrites gather what the input synapses bring, the soma fires, the axon carries the activity on,
weighted once per outgoing synapse (the weights live on the sender's axon, as in the original).
Errors come back along the axon and leave along the dendrites. `Neuron` is the nine steps and no
sockets; `serve` is the process around it: sockets, wiring, the event loop, logs and signals.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import zmq

from exmachina import transport, wire
from exmachina.activations import ACTIVATIONS
from exmachina.learning import axon_gradient, descend, error, fire
from exmachina.logs import close_log, open_log
from exmachina.runs import RunDir, Site
from exmachina.topology import NeuronSpec, socket_name

PORTS = ("in", "err", "ctl")  # the bound PULL sockets: activities in, errors in, control

# Samples a neuron keeps half-gathered at once; beyond this the oldest is forgotten (and logged), so
# a flood of stray sample ids can never grow a neuron's memory without bound.
MAX_PENDING = 256


class Unexpected(ValueError):
    """A well-formed message that makes no sense now: duplicate, unknown synapse or sample."""


class Gathering:
    """One value per synapse for one sample, kept in synapse order whatever order they arrive in."""

    __slots__ = ("values", "seen", "missing")

    def __init__(self, synapses: int) -> None:
        self.values = np.zeros(synapses)
        self.seen = bytearray(synapses)
        self.missing = synapses

    def put(self, synapse: int, value: float) -> bool:
        """Store one value; True once every synapse has reported."""
        if not 0 <= synapse < len(self.seen):
            raise Unexpected(f"no synapse {synapse} (have {len(self.seen)})")
        if self.seen[synapse]:
            raise Unexpected(f"synapse {synapse} already reported")
        self.seen[synapse] = 1
        self.values[synapse] = value
        self.missing -= 1
        return self.missing == 0


class Pending(dict):
    """Gatherings by sample id, bounded by MAX_PENDING (oldest forgotten first)."""

    def __init__(self, synapses: int, log: logging.Logger, what: str) -> None:
        super().__init__()
        self.synapses, self.log, self.what = synapses, log, what

    def put(self, sample: int, synapse: int, value: float) -> np.ndarray | None:
        gathering = self.get(sample)
        if gathering is None:
            if len(self) >= MAX_PENDING:
                oldest = next(iter(self))
                del self[oldest]
                self.log.warning("forgot half-gathered %s of sample %d (too many pending)", self.what, oldest)
            gathering = self[sample] = Gathering(self.synapses)
        if gathering.put(synapse, value):
            del self[sample]
            return gathering.values
        return None


class Dendrites:
    """The input synapses: activities come in, errors go back out."""

    def __init__(self, synapses: int, log: logging.Logger) -> None:
        self.incoming = Pending(synapses, log, "activities")
        self.links: list[zmq.Socket] = []  # one PUSH back to each upstream peer, in synapse order

    def send_back(self, sample: int, delta: float, me: int) -> None:
        frame = wire.encode(wire.BACKWARD, sample, me, delta)
        for link in self.links:
            link.send(frame)


class Axon:
    """The outgoing synapses, each with its own weight."""

    def __init__(self, weights: np.ndarray, plastic: bool, log: logging.Logger) -> None:
        self.weights = weights
        self.plastic = plastic
        self.errors = Pending(len(weights), log, "errors")
        self.links: list[zmq.Socket] = []  # one PUSH to each downstream peer, in synapse order

    def transmit(self, kind: int, sample: int, activity: float, me: int) -> None:
        for link, weighted in zip(self.links, (activity * self.weights).tolist()):
            link.send(wire.encode(kind, sample, me, weighted))

    def learn(self, gradient: np.ndarray, learning_rate: float) -> None:
        if self.plastic:
            descend(self.weights, gradient, learning_rate)


class Neuron:
    """The nine steps of the original, as message handlers."""

    def __init__(self, spec: NeuronSpec, log: logging.Logger) -> None:
        self.spec = spec
        self.log = log
        self.activation = ACTIVATIONS[spec.activation]
        self.bias = np.array(spec.bias)  # 0-d array: updated in place like the axon
        self.dendrites = Dendrites(spec.synapses_in, log)
        self.axon = Axon(spec.axon.astype(float), spec.plastic_axon, log)
        self.fired: dict[int, tuple[float, float]] = {}  # sample -> (net, activity), until its error
        self.updates = 0
        self.activity_sum = self.error_sum = 0.0

    def on_activity(self, kind: int, sample: int, synapse: int, value: float) -> None:
        if kind == wire.FORWARD and sample in self.fired:
            raise Unexpected(f"sample {sample} already fired")
        inputs = self.dendrites.incoming.put(sample, synapse, value)  # 1. wait for every input synapse
        if inputs is None:
            return
        net, activity = fire(np.sum(inputs), self.bias, self.activation)  # 2. own activity
        if kind == wire.FORWARD:
            self.fired[sample] = (net, activity)
            self.activity_sum += float(activity)
        self.axon.transmit(kind, sample, activity, self.spec.index)  # 3-4. weight per synapse, send on

    def on_error(self, sample: int, synapse: int, value: float) -> None:
        if sample not in self.fired:
            raise Unexpected(f"error for sample {sample}, which this neuron has not fired")
        errors = self.axon.errors.put(sample, synapse, value)  # 5. wait for every downstream error
        if errors is None:
            return
        net, activity = self.fired.pop(sample)
        delta = error(net, self.activation, self.axon.weights, errors)  # 6. own error, old weights
        self.dendrites.send_back(sample, float(delta), self.spec.index)  # 7. back along the inputs
        gradient = axon_gradient(activity, errors)  # 8. gradient of each outgoing weight
        self.axon.learn(gradient, self.spec.learning_rate)  # 9. update the weights
        if self.spec.learn_bias:
            descend(self.bias, delta, self.spec.learning_rate)
        self.updates += 1
        self.error_sum += abs(float(delta))
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "update sample=%d delta=%.6g bias=%.6g weights=%s",
                sample,
                delta,
                self.bias,
                _fmt(self.axon.weights),
            )

    def forget(self, sample: int) -> None:
        """Drop every trace of a sample that will never complete (it is being replayed)."""
        self.fired.pop(sample, None)
        self.dendrites.incoming.pop(sample, None)
        self.axon.errors.pop(sample, None)


def _fmt(values: np.ndarray, limit: int = 8) -> str:
    shown = " ".join(f"{v:+.4f}" for v in values[:limit])
    return f"[{shown}{' ...' if len(values) > limit else ''}]"


def serve(spec: NeuronSpec, site: Site) -> None:
    """Process entry point: bind, say hello, get wired, then handle messages until told to stop."""
    run = RunDir(site.run_dir)
    log = open_log(spec.id, run.log(spec.id), site.log_level, site.log_max_bytes, site.log_backups)
    log.info(
        "start pid=%d activation=%s bias=%+.4f learn_bias=%s axon=%s",
        os.getpid(),
        spec.activation,
        spec.bias,
        spec.learn_bias,
        _fmt(spec.axon),
    )
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    stop_signal: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_signal.append(signum))
    signal.set_wakeup_fd(wakeup_w)
    ctx = transport.context(sockets=len(spec.upstream) + len(spec.downstream) + 4)
    try:
        _serve(spec, site, log, ctx, wakeup_r, stop_signal)
    finally:
        ctx.destroy(linger=0)
        transport.release(
            [transport.bind_address(site.transport, site.place, socket_name(spec.id, port)) for port in PORTS]
        )
        os.close(wakeup_r)
        os.close(wakeup_w)
        log.info("exit")
        close_log(log)


def _serve(spec, site, log, ctx, wakeup_r, stop_signal) -> None:  # noqa: ANN001 - internal
    forward_in, forward_ep = transport.pull(ctx, site.transport, site.place, socket_name(spec.id, PORTS[0]))
    errors_in, errors_ep = transport.pull(ctx, site.transport, site.place, socket_name(spec.id, PORTS[1]))
    control, control_ep = transport.pull(ctx, site.transport, site.place, socket_name(spec.id, PORTS[2]))
    coordinator = transport.push(ctx, site.coordinator, transport.CONTROL_LINGER_MS)
    endpoints = {"forward": forward_ep, "backward": errors_ep, "control": control_ep}
    coordinator.send(wire.encode(wire.HELLO, wire.VERSION, spec.id, os.getpid(), endpoints))
    log.info("bound forward=%s backward=%s control=%s; hello sent", forward_ep, errors_ep, control_ep)

    neuron = Neuron(spec, log)
    debug = log.isEnabledFor(logging.DEBUG)
    received = dropped = 0
    last_updates, next_stats = 0, time.monotonic() + site.stats_interval

    def drop(frame: bytes, reason: object) -> None:
        nonlocal dropped
        dropped += 1
        log.warning("dropped message (%s): %r", reason, frame[:64])

    def handle_control(message: list) -> bool:
        kind = message[0]
        if kind == wire.WIRE:
            _, version, downstream, upstream = message
            if version != wire.VERSION:
                raise Unexpected(f"protocol version {version}, this neuron speaks {wire.VERSION}")
            if len(downstream) != len(spec.downstream) or len(upstream) != len(spec.upstream):
                raise Unexpected(
                    f"wiring for {len(upstream)}->{len(downstream)} synapses, "
                    f"need {len(spec.upstream)}->{len(spec.downstream)}"
                )
            for link in neuron.axon.links + neuron.dendrites.links:
                link.close()
            neuron.axon.links = [transport.push(ctx, ep) for ep in downstream]
            neuron.dendrites.links = [transport.push(ctx, ep) for ep in upstream]
            log.info(
                "wired: %d input synapses from %s; %d output synapses to %s",
                len(upstream),
                _peers(spec.upstream),
                len(downstream),
                _peers(spec.downstream),
            )
            coordinator.send(wire.encode(wire.READY, spec.id))
        elif kind == wire.SNAPSHOT:
            coordinator.send(
                wire.encode(
                    wire.STATE,
                    spec.id,
                    message[1],
                    float(neuron.bias),
                    neuron.axon.weights.tolist(),
                    neuron.updates,
                )
            )
        elif kind == wire.DROP:
            neuron.forget(message[1])
            log.info("dropped sample %d on request", message[1])
        elif kind == wire.STOP:
            log.info("stop requested")
            return False
        else:
            raise Unexpected(f"{wire.NAMES[kind]} is not a control message")
        return True

    poller = zmq.Poller()
    for sock in (control, errors_in, forward_in):
        poller.register(sock, zmq.POLLIN)
    poller.register(wakeup_r, zmq.POLLIN)
    timeout_ms = int(site.stats_interval * 1000)
    running = True
    while running and not stop_signal:
        ready = dict(poller.poll(timeout_ms))
        if wakeup_r in ready:
            os.read(wakeup_r, 64)
        for sock in (control, errors_in, forward_in):
            if sock not in ready:
                continue
            for frame in transport.drain(sock):
                received += 1
                try:
                    message = wire.decode(frame)
                    kind = message[0]
                    if debug:
                        log.debug("recv %s", wire.describe(message))
                    if sock is control:
                        running = handle_control(message) and running
                    elif sock is forward_in and kind in (wire.FORWARD, wire.INFER):
                        neuron.on_activity(kind, message[1], message[2], message[3])
                    elif sock is errors_in and kind == wire.BACKWARD:
                        neuron.on_error(message[1], message[2], message[3])
                    else:
                        raise Unexpected(f"{wire.NAMES[kind]} on the wrong socket")
                except (wire.WireError, Unexpected) as exc:
                    drop(frame, exc)
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + site.stats_interval
            if neuron.updates != last_updates:
                n = neuron.updates - last_updates
                log.info(
                    "stats updates=%d activity_mean=%.4f |error|_mean=%.4g bias=%+.4f axon=%s "
                    "received=%d dropped=%d",
                    neuron.updates,
                    neuron.activity_sum / n,
                    neuron.error_sum / n,
                    float(neuron.bias),
                    _fmt(neuron.axon.weights),
                    received,
                    dropped,
                )
                neuron.activity_sum = neuron.error_sum = 0.0
                last_updates = neuron.updates
    if stop_signal:
        log.info("stop on signal %d", stop_signal[0])
    log.info(
        "final updates=%d bias=%+.4f axon=%s received=%d dropped=%d",
        neuron.updates,
        float(neuron.bias),
        _fmt(neuron.axon.weights),
        received,
        dropped,
    )


def _peers(ids: tuple[str, ...]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{ids[0]} ... {ids[-1]}"
