"""ZeroMQ plumbing: the pipeline pattern (PUSH/PULL), one link per synapse, endpoints from one place.

Every process binds its PULL sockets and connects one PUSH per outgoing link. PUSH queues while the
peer is not there yet (connect is asynchronous) and blocks when the high-water mark is reached, so a
slow neuron pushes back on its senders instead of losing messages.
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
from pathlib import Path

import zmq

from exmachina.network import curve

# Exact training keeps one sample in flight: a link never holds more than a few messages. The mark is
# a safety bound against a runaway sender, far above any legitimate depth.
HIGH_WATER_MARK = 10_000
# Synapse traffic at shutdown belongs to a sample being abandoned: waiting to deliver it only delays exit.
SYNAPSE_LINGER_MS = 0
# Control replies (HELLO, STATE) must reach the coordinator even if the neuron exits right after.
CONTROL_LINGER_MS = 2_000

# A neuron says HELLO before the coordinator (started last) has bound: retrying every 100 ms, a
# thousand waiting neurons spend start-up reconnecting. Its link to the coordinator backs off up to
# this, which is also how late a HELLO may arrive once the coordinator is up (1 s cost a 100-neuron
# start half a second). Synapse links keep ZeroMQ's steady 100 ms, for a quick rewiring.
CONTROL_RECONNECT_MAX_MS = 300

UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL


class TransportError(RuntimeError):
    """The plumbing cannot be set up (socket path too long, too few file descriptors)."""


def socket_dir(base: str | None = None) -> Path:
    """A private (0700) directory for the run's ipc socket files: short, so paths fit sun_path."""
    base = base or os.environ.get("EXMACHINA_SOCKET_DIR") or tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="exm-", dir=base))


def bind_address(transport: str, place: str, name: str) -> str:
    """Where a process binds: a socket file in the run's socket dir, or any free port on `place`."""
    if transport == "ipc":
        path = f"{place}/{name}"
        if len(path.encode()) > UNIX_PATH_MAX:
            raise TransportError(
                f"ipc socket path {path!r} is {len(path.encode())} bytes, over the {UNIX_PATH_MAX}-byte "
                "limit: set EXMACHINA_SOCKET_DIR to a shorter directory"
            )
        return f"ipc://{path}"
    if transport == "tcp":
        return f"tcp://{place}:*"
    raise TransportError(f"unknown transport {transport!r}")


def context(sockets: int) -> zmq.Context:
    """A context sized for `sockets` sockets, with the fd soft limit raised to match."""
    ensure_fd_limit(sockets)
    ctx = zmq.Context(io_threads=1)
    ctx.set(zmq.MAX_SOCKETS, max(1024, sockets + 64))  # a context option: set, not setsockopt
    return ctx


def ensure_fd_limit(sockets: int) -> None:
    """Each ZeroMQ socket costs about two descriptors (its mailbox and its connection)."""
    needed = 2 * sockets + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise TransportError(
            f"this process needs about {needed} file descriptors for {sockets} sockets, but the hard "
            f"limit is {hard}: raise it (ulimit -Hn) or use fewer neurons per layer"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def pull(
    ctx: zmq.Context, transport: str, place: str, name: str, keys: curve.Keypair | None = None
) -> tuple[zmq.Socket, str]:
    """Bind a PULL socket (a CURVE server when given keys); returns it and the endpoint peers must
    connect to."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.LINGER, SYNAPSE_LINGER_MS)
    if keys is not None:
        curve.serve(sock, keys)
    sock.bind(bind_address(transport, place, name))
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def push(
    ctx: zmq.Context,
    endpoint: str,
    linger_ms: int = SYNAPSE_LINGER_MS,
    keys: curve.Keypair | None = None,
    server_key: bytes | None = None,
    reconnect_max_ms: int = 0,
) -> zmq.Socket:
    """Connect one PUSH link to a peer's PULL endpoint (as a CURVE client of `server_key` when given
    keys); `reconnect_max_ms` > 0 makes retries back off up to that."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_max_ms)
    if keys is not None:
        if server_key is None:
            raise ValueError(f"{endpoint}: a CURVE client needs the server's public key")
        curve.client(sock, keys, server_key)
    sock.connect(endpoint)
    return sock


def release(endpoints: list[str]) -> None:
    """Remove this process's ipc socket files (after its context is gone), and the run's socket
    directory once it is empty: whoever exits last, supervised or orphaned, leaves nothing behind."""
    directories = set()
    for endpoint in endpoints:
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://") :])
            path.unlink(missing_ok=True)
            directories.add(path.parent)
    for directory in directories:
        with contextlib.suppress(OSError):  # not empty yet: a peer is still running
            directory.rmdir()


def drain(sock: zmq.Socket, limit: int = 10_000) -> list[bytes]:
    """Every frame ready now (up to `limit`), so one wakeup serves many messages."""
    frames: list[bytes] = []
    try:
        while len(frames) < limit:
            frames.append(sock.recv(zmq.NOBLOCK, copy=True))
    except zmq.Again:
        pass
    return frames
