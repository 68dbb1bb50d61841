"""Bare processes for the bench's baselines, ZeroMQ and msgpack only: the transport ceiling, the
round trip, and a bare network of the training network's shape whose neurons only pass messages on.

They run as `python -c` workers started by `exmachina.bench`. This module imports only what a worker
needs (not numpy, rich or the engine), so that a worker starts in a fraction of the time the whole
bench takes to import: on a busy machine that decides whether its peer waits seconds for it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import zmq

# The engine's own values, copied rather than imported so that a worker starts light; a test checks
# that they still agree.
FORWARD, BACKWARD, STOP = 1, 3, 13  # wire.FORWARD, wire.BACKWARD, wire.STOP
HIGH_WATER_MARK = 10_000  # transport.HIGH_WATER_MARK
BARE_IDLE_MS = 30_000


def synapse_message(sample: int) -> bytes:
    """A synapse message of the size the network sends online: [kind, sample, sender, 8 bytes]."""
    return msgpack.packb([FORWARD, sample, 0, bytes(8)], use_bin_type=True)


def _pull_worker(endpoint: str, warmup: int, messages: int) -> dict:
    """Receive and unpack; time the messages after the warm-up (the sender's start-up is not timed)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    for _ in range(warmup):
        msgpack.unpackb(sock.recv())
    started = time.perf_counter()
    for _ in range(messages):
        msgpack.unpackb(sock.recv())
    seconds = time.perf_counter() - started
    ctx.destroy(linger=0)
    unlink(endpoint)
    return {"messages": messages, "seconds": seconds}


def _push_worker(endpoint: str, total: int) -> dict:
    """Pack and send as fast as PUSH takes them (it blocks at the high-water mark, as a neuron does).

    It stays connected until its stdin closes (the bench closes it once the receiver has reported):
    libzmq drops what a PULL has not yet read off a connection whose PUSH end goes away while the
    PULL's queue is full, however long the PUSH lingers."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.connect(endpoint)
    payload = bytes(8)
    pack = msgpack.Packer(use_bin_type=True).pack
    for i in range(total):
        sock.send(pack([FORWARD, i, 0, payload]))
    sys.stdin.read()
    sock.close(linger=0)
    ctx.term()
    return {"sent": total}


def _echo_worker(inbox: str, outbox: str, count: int) -> dict:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(inbox)
    push.connect(outbox)
    for _ in range(count):
        push.send(pull.recv())
    push.close(linger=1_000)
    ctx.destroy(linger=0)
    unlink(inbox)
    return {"echoed": count}


def _ping_worker(inbox: str, outbox: str, warmup: int, count: int) -> dict:
    """Round trips one at a time: send, wait for the echo. Returns the distribution in µs."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(inbox)
    push.connect(outbox)
    times = []
    for i in range(warmup + count):
        message = synapse_message(i)
        started = time.perf_counter_ns()
        push.send(message)
        pull.recv()
        if i >= warmup:
            times.append((time.perf_counter_ns() - started) / 1_000)
    push.close(linger=0)
    ctx.destroy(linger=0)
    unlink(inbox)
    times.sort()
    return {
        "round_trips": count,
        "median_us": statistics.median(times),
        "mean_us": statistics.fmean(times),
        "p99_us": times[min(len(times) - 1, int(0.99 * len(times)))],
        "min_us": times[0],
    }


def _bare_neuron(inbox: str, upstream: list[str], downstream: list[str]) -> None:
    """A neuron with the real one's links and messages but no math: once every input synapse has
    reported it sends on; once every downstream error is back it sends back. Ends on STOP."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, BARE_IDLE_MS)  # an orphan (the bench was killed) ends by itself
    pull.bind(inbox)
    ups, downs = [ctx.socket(zmq.PUSH) for _ in upstream], [ctx.socket(zmq.PUSH) for _ in downstream]
    for sock, endpoint in [*zip(ups, upstream), *zip(downs, downstream)]:
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        sock.connect(endpoint)
    pack, payload = msgpack.Packer(use_bin_type=True).pack, bytes(8)
    onward = {FORWARD: downs, BACKWARD: ups}  # where each kind goes once all of it is in
    needed = {FORWARD: len(ups), BACKWARD: len(downs)}
    seen = {FORWARD: 0, BACKWARD: 0}
    while True:
        try:
            message = msgpack.unpackb(pull.recv())
        except zmq.Again:
            break
        kind = message[0]
        if kind not in onward:  # STOP
            break
        seen[kind] += 1
        if seen[kind] == needed[kind]:
            seen[kind] = 0
            frame = pack([kind, message[1], 0, payload])
            for sock in onward[kind]:
                sock.send(frame)
    ctx.destroy(linger=0)
    unlink(inbox)


def _bare_network_worker(sizes: list[int], directory: str, warmup: int, samples: int) -> dict:
    """Fork one bare neuron per neuron of `sizes` (over ipc in `directory`) and drive `samples` online
    samples through them as the coordinator does: FORWARD to every input neuron, wait for every
    output, BACKWARD to every output neuron, wait for every input. The floor of what a network of
    this shape can do on this machine with this stack, whatever the neurons compute."""
    coordinator = f"ipc://{directory}/coordinator"
    layers = [[f"ipc://{directory}/{layer}.{i}" for i in range(n)] for layer, n in enumerate(sizes)]
    pids = _fork_bare_neurons(coordinator, layers)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    pull.bind(coordinator)
    inputs, outputs = [ctx.socket(zmq.PUSH) for _ in layers[0]], [ctx.socket(zmq.PUSH) for _ in layers[-1]]
    for sock, endpoint in [*zip(inputs, layers[0]), *zip(outputs, layers[-1])]:
        sock.setsockopt(zmq.LINGER, 1_000)
        sock.connect(endpoint)
    one = _one_sample(pull, inputs, outputs)
    for i in range(warmup):  # the first samples also wait for every connection to be made
        one(i)
    started = time.perf_counter()
    for i in range(samples):
        one(warmup + i)
    seconds = time.perf_counter() - started
    _stop_bare_neurons(ctx, inputs, layers)
    ctx.destroy(linger=1_000)
    for pid in pids:
        os.waitpid(pid, 0)
    unlink(coordinator)
    return {"sizes": sizes, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def _fork_bare_neurons(coordinator: str, layers: list[list[str]]) -> list[int]:
    """One forked bare neuron per inbox, each linked to the layers either side (or the coordinator)."""
    pids = []
    for layer, inboxes in enumerate(layers):
        upstream = [coordinator] if layer == 0 else layers[layer - 1]
        downstream = [coordinator] if layer == len(layers) - 1 else layers[layer + 1]
        for inbox in inboxes:
            pid = os.fork()
            if pid == 0:  # the worker has no ZeroMQ context yet: nothing of it crosses the fork
                try:
                    _bare_neuron(inbox, upstream, downstream)
                finally:
                    os._exit(0)
            pids.append(pid)
    return pids


def _one_sample(
    pull: zmq.Socket, inputs: list[zmq.Socket], outputs: list[zmq.Socket]
) -> Callable[[int], None]:
    """One online sample as the coordinator drives it: forward in, every output back, errors back
    down, every input back."""
    pack, payload = msgpack.Packer(use_bin_type=True).pack, bytes(8)

    def one(sample: int) -> None:
        for sock in inputs:
            sock.send(pack([FORWARD, sample, 0, payload]))
        for _ in outputs:
            msgpack.unpackb(pull.recv())
        for sock in outputs:
            sock.send(pack([BACKWARD, sample, 0, payload]))
        for _ in inputs:
            msgpack.unpackb(pull.recv())

    return one


def _stop_bare_neurons(ctx: zmq.Context, inputs: list[zmq.Socket], layers: list[list[str]]) -> None:
    """STOP to every bare neuron: the input layer over its links, the rest directly, as they have no
    coordinator link."""
    stop = msgpack.packb([STOP], use_bin_type=True)
    for sock in inputs:
        sock.send(stop)
    for layer in layers[1:]:
        for endpoint in layer:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1_000)
            sock.connect(endpoint)
            sock.send(stop)


def unlink(endpoint: str) -> None:
    """libzmq leaves an ipc socket file behind when the binding socket closes: remove it."""
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)


WORKERS: dict[str, Callable[..., dict]] = {
    "pull": _pull_worker,
    "push": _push_worker,
    "echo": _echo_worker,
    "ping": _ping_worker,
    "bare-network": _bare_network_worker,
}


def main(name: str, args_json: str) -> None:
    """Entry of a worker process: run one worker and print its result as one JSON line."""
    print(json.dumps(WORKERS[name](*json.loads(args_json))), flush=True)
