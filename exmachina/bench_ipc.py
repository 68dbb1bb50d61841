"""The two bare processes of the transport ceiling and the round trip: ZeroMQ and msgpack only.

They run as `python -c` workers started by `exmachina.bench`. This module imports only what a worker
needs (not numpy, rich or the engine), so that a worker starts in a fraction of the time the whole
bench takes to import: on a busy machine that decides whether its peer waits seconds for it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import zmq

# The engine's own values, copied rather than imported so that a worker starts light; a test checks
# that they still agree.
FORWARD = 1  # wire.FORWARD
HIGH_WATER_MARK = 10_000  # transport.HIGH_WATER_MARK


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


def unlink(endpoint: str) -> None:
    """libzmq leaves an ipc socket file behind when the binding socket closes: remove it."""
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)


WORKERS: dict[str, Callable[..., dict]] = {
    "pull": _pull_worker,
    "push": _push_worker,
    "echo": _echo_worker,
    "ping": _ping_worker,
}


def main(name: str, args_json: str) -> None:
    """Entry of a worker process: run one worker and print its result as one JSON line."""
    print(json.dumps(WORKERS[name](*json.loads(args_json))), flush=True)
