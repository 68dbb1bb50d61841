"""CURVE on the wire: every link encrypted, and only the run's own processes let in.

Each run makes a fresh keypair per process (every neuron and the coordinator) before anything is
spawned. The run's public keys are common knowledge (`Site.public_keys`); each secret key goes only to
its own process, as an argument of its start, and is never written to disk or to a log.

Every bound PULL socket is a CURVE server. A CURVE server lets in anyone who knows its public key
unless a ZAP handler says otherwise, so each process runs a `Gatekeeper`: the ZAP handler (RFC 27)
that admits only the keys of the process's own peers, and logs who it refused. The sockets also set
ZAP_ENFORCE_DOMAIN, so a missing gatekeeper refuses everyone rather than admitting everyone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from exmachina.rundir.logs import Log

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, fixed by RFC 27
ZAP_DOMAIN = b"exmachina"
# Refusals logged one line each, then only counted: a flood of connection attempts cannot push a
# neuron's own story out of its (rotating) log.
LOGGED_REFUSALS = 100
GATEKEEPER_SOCKETS = 3  # its ZAP socket and the two ends of the inbox's monitor

# What the gatekeeper hears from the inbox's monitor: handshakes that failed before ZAP was asked
# (a plain or PLAIN peer, a CURVE peer with the wrong server key). ZAP refusals it logs itself.
_WATCHED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_WHY: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "not a CURVE client",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "CURVE handshake does not decrypt (wrong server key?)",
}


@dataclass(frozen=True)
class Keypair:
    """One process's CURVE keys, Z85-encoded (40 bytes each). The secret stays out of reprs, so a
    logged or printed spec never shows it."""

    public: bytes
    secret: bytes = field(repr=False)


def generate(ids: Iterable[str]) -> dict[str, Keypair]:
    """A fresh keypair for each process of a run."""
    keys = {}
    for process_id in ids:
        public, secret = zmq.curve_keypair()
        keys[process_id] = Keypair(public, secret)
    return keys


def public_keys(keys: Mapping[str, Keypair]) -> dict[str, bytes]:
    """What every process may know: the run's public keys by process id."""
    return {process_id: pair.public for process_id, pair in keys.items()}


def serve(sock: zmq.Socket, keys: Keypair) -> None:
    """Make a socket, before it binds, a CURVE server whose peers the gatekeeper vets."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def client(sock: zmq.Socket, keys: Keypair, server_key: bytes) -> None:
    """Make a socket, before it connects, a CURVE client of the server with public key `server_key`."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_key


class Gatekeeper:
    """The ZAP handler of one process, on a thread of its own.

    ZAP requests come at connection time only, so the thread sleeps in one blocking poll (no GIL held)
    while messages flow: the neuron's loop keeps its single blocking recv. `admitted` maps each
    public key let in to the process it belongs to; every other peer is refused and logged, one line
    per peer (address and key) however often it tries.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        admitted: Mapping[str, bytes],
        log: Log,
        run_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        self.log = log
        self.admitted = {z85.decode(key): process_id for process_id, key in admitted.items()}
        # the run's other keys, only to name them in a refusal (a neuron admits only its neighbours)
        self.run_keys = {z85.decode(key): process_id for process_id, key in (run_keys or {}).items()}
        self.refused = 0
        self._logged = 0
        self._seen: set[tuple[bytes, bytes]] = set()
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)  # before any CURVE socket of this context can be reached
        self._watched: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._thread = threading.Thread(target=self._run, name="gatekeeper", daemon=True)

    def start(self, watched: zmq.Socket) -> None:
        """Watch one bound CURVE server for failed handshakes, and start answering ZAP."""
        self._watched = watched
        self._monitor = watched.get_monitor_socket(_WATCHED | zmq.EVENT_MONITOR_STOPPED)
        # Signals belong to the main thread (a neuron blocked in recv is woken by SIGTERM): the
        # thread starts with every signal blocked, as libzmq's own threads do.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def stop(self) -> None:
        """End the thread (before the context goes): stopping the monitor is its cue."""
        if self._thread.is_alive() and self._watched is not None:
            self._watched.disable_monitor()
            self._thread.join(timeout=2.0)
        elif self._thread.ident is None:  # never started: its sockets are still the caller's
            self.zap.close(linger=0)
            if self._monitor is not None:
                self._monitor.close(linger=0)
        if self.refused:
            self.log.info("refused %d connection attempts in all", self.refused)

    def _run(self) -> None:
        monitor = self._monitor
        assert monitor is not None  # start() sets it before the thread runs
        poller = zmq.Poller()
        poller.register(self.zap, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                for sock, _ in poller.poll():
                    if sock is self.zap:
                        self._answer(self.zap.recv_multipart())
                    elif not self._on_event(parse_monitor_message(monitor.recv_multipart())):
                        return
        except zmq.ZMQError:  # the context went first (a crash): nothing left to guard
            pass
        finally:
            self.zap.close(linger=0)
            monitor.close(linger=0)

    def _answer(self, request: list[bytes]) -> None:
        """One ZAP request: 200 for an admitted CURVE key, 400 for anything else."""
        if len(request) < 6 or request[0] != b"1.0":
            if len(request) >= 2:
                self.zap.send_multipart([b"1.0", request[1], b"400", b"bad ZAP request", b"", b""])
            return
        _, request_id, _, address, _, mechanism, *credentials = request
        key = credentials[0] if mechanism == b"CURVE" and len(credentials) == 1 else b""
        process_id = self.admitted.get(key)
        if process_id is not None:
            self.zap.send_multipart([b"1.0", request_id, b"200", b"OK", process_id.encode(), b""])
            return
        self.zap.send_multipart([b"1.0", request_id, b"400", b"not a peer of this process", b"", b""])
        if key in self.run_keys:
            why = f"key of {self.run_keys[key]}, which is not wired to this process"
        elif key:
            why = "not a key of this run"
        else:
            why = f"{mechanism.decode(errors='replace')} is not CURVE"
        shown = z85.encode(key).decode() if len(key) == 32 else "-"
        where = address.decode(errors="replace") or "a local (ipc) peer"
        self._refuse((address, key), f"from {where}, CURVE key {shown}: {why}")

    def _on_event(self, event: Mapping) -> bool:
        """A failed handshake from the monitor; False once the monitor is stopped."""
        kind, value = event["event"], int(event["value"])
        if kind == zmq.EVENT_MONITOR_STOPPED:
            return False
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:  # the value is a ZMTP protocol error
            why = _WHY.get(value, "handshake failed")
            with contextlib.suppress(ValueError):
                why += f" ({zmq.Event(value).name})"
        else:  # no detail: the value is an errno (a plain peer that hung up first: EPIPE, ECONNRESET)
            why = f"handshake failed ({errno.errorcode.get(value, value)}: {os.strerror(value)})"
        # libzmq's monitor does not say who the peer was, but libzmq never retries a handshake that
        # failed: each event is one connection attempt.
        self._refuse(None, f"on {event['endpoint'].decode(errors='replace')}: {why}")
        return True

    def _refuse(self, peer: tuple[bytes, bytes] | None, what: str) -> None:
        """Count a refusal; log it unless this peer was refused before or the log has had enough
        (the peers remembered are the ones logged: a flood of fresh keys cannot grow memory)."""
        self.refused += 1
        if peer in self._seen or self._logged > LOGGED_REFUSALS:
            return
        self._logged += 1
        if self._logged > LOGGED_REFUSALS:
            self.log.warning("refused more than %d peers: the rest are counted, not logged", LOGGED_REFUSALS)
            return
        if peer is not None:
            self._seen.add(peer)
        self.log.warning("refused a connection %s", what)
