"""The serving coordinator: rows in, the trained network's outputs out, through the neuron processes.

It is the training coordinator (coordinator.py) with the same wiring, receive path and replay; what
changes is where samples come from. Requests arrive from the HTTP front's threads (front.py) through
an `Inlet`, and their rows travel as forward-only (INFER) batches, which the neurons do not keep: many
batches may be in flight at once and rows of several requests may share one, and every output is still
exactly what the dense forward pass gives. A neuron its supervisor restarts comes back with the model's
weights (a serve directory holds no checkpoints); the batches in flight are dropped everywhere and
replayed under new ids, so no request is lost or answered with a half-computed row.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import zmq

from exmachina.config import Config
from exmachina.model.topology import COORDINATOR
from exmachina.network import curve, front, wire
from exmachina.network.coordinator import (
    MAX_REPLAYS,
    SYNAPSE,
    Coordinator,
    Flight,
    Restart,
    Stalled,
    Stopped,
)
from exmachina.network.front import Unavailable
from exmachina.rundir.directory import RunDir, Site, write_json
from exmachina.rundir.logs import Log, close_log, open_log

INLET = "inproc://requests"
MAX_QUEUED_VALUES = 2**24  # input values waiting or in flight, all requests together: beyond, 503


@dataclass
class Job:
    """One request: its rows, the outputs as they come back, and the future its HTTP thread waits on."""

    rows: np.ndarray
    outputs: np.ndarray
    future: Future = field(default_factory=Future)
    launched: int = 0  # rows sent into the network so far
    left: int = 0  # rows not answered yet

    def __post_init__(self) -> None:
        self.left = len(self.rows)

    def fail(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(Unavailable(reason))


class Inlet:
    """Requests from the HTTP threads to the coordinator's loop: a job goes on a queue and a byte on an
    inproc socket, which the loop polls with its inbox, so it wakes at once and never on a timer."""

    def __init__(self, ctx: zmq.Context, outputs: int, max_values: int = MAX_QUEUED_VALUES) -> None:
        self.outputs, self.max_values = outputs, max_values
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.socket = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(INLET)
        self._bell = ctx.socket(zmq.PUSH)
        self._bell.setsockopt(zmq.LINGER, 0)
        self._bell.connect(INLET)
        self._lock = threading.Lock()  # the bell is one socket shared by every HTTP thread
        self._values = 0  # input values of the jobs submitted and not answered
        self._closed = False

    def submit(self, rows: np.ndarray) -> Future:
        """Hand rows (a 2-d float array) to the network; the future gets their outputs. Any thread."""
        job = Job(rows, np.empty((len(rows), self.outputs)))
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._values + rows.size > self.max_values:
                raise Unavailable("too many rows waiting: try again later")
            self._values += rows.size
            self.jobs.put(job)
            self._bell.send(b"")
        job.future.add_done_callback(lambda _: self._release(rows.size))
        return job.future

    def _release(self, values: int) -> None:
        with self._lock:
            self._values -= values

    def take(self) -> list[Job]:
        """Every job submitted since the last take. The loop's thread only."""
        while True:  # the bell's bytes only wake the poll
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        jobs = []
        while True:
            try:
                jobs.append(self.jobs.get_nowait())
            except queue.Empty:
                return jobs

    def close(self) -> list[Job]:
        """Refuse further jobs; returns the ones still queued."""
        with self._lock:
            self._closed = True
            self._bell.close()
        return self.take()


@dataclass
class Batch(Flight):
    """A forward-only flight whose rows belong to one or more jobs."""

    pieces: list[tuple[Job, int, int]] = field(default_factory=list)  # (job, its first row, rows)

    def restart(self) -> Batch:
        return Batch(self.rows, self.x, self.y, self.kind, pieces=self.pieces)


class Arrived:
    """Not a wire message: what the receive path notes when requests came in, so the loop admits them."""


ARRIVED = Arrived()


class Server(Coordinator):
    """The coordinator of a serving network: admits jobs as batches, answers each job when its last
    row is out."""

    def __init__(
        self,
        config: Config,
        site: Site,
        log: Log,
        in_flight: int,
        batch: int,
        keys: curve.Keypair | None = None,
    ) -> None:
        super().__init__(config, site, log, keys)
        self.in_flight, self.batch = in_flight, batch
        self.inlet = Inlet(self.ctx, config.layer_sizes[-1])
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)
        self.poller.register(self.inlet.socket, zmq.POLLIN)
        self.waiting: collections.deque[Job] = collections.deque()
        self.flights: dict[int, Flight] = {}  # every one a Batch
        self.requests = self.rows = 0

    def _wait(self, timeout: float) -> None:
        """The inbox and the inlet, in one poll."""
        ready = dict(self.poller.poll(int(timeout * 1000)))
        if self.inbox in ready:
            self._read_inbox()
        if self.inlet.socket in ready:
            jobs = self.inlet.take()
            self.waiting.extend(jobs)
            self.requests += len(jobs)
            self.backlog.append(cast(wire.Message, ARRIVED))  # a note in the queue the waits read

    def _aside(self, message: wire.Message) -> None:
        if message is not ARRIVED:  # new jobs wait in self.waiting whoever read the note
            super()._aside(message)

    # -- the loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        """Answer jobs until a stop is asked and the batches in flight are out (or its grace is over)."""
        timeout = self.config.training.stall_timeout
        stalls = 0
        deadline = time.monotonic() + timeout
        while self.stop_requested_at is None or self.flights:
            if not self.flights:  # nothing to wait for: nothing can stall
                deadline = time.monotonic() + timeout
            if self.stop_requested_at is None:
                self._admit()
            try:
                message = self._receive(deadline)
            except Stalled as exc:
                if self.flights:
                    stalls = self._stalled(stalls + 1, exc)
                    deadline = time.monotonic() + timeout
                continue
            except Stopped:
                return
            if isinstance(message, Restart):
                self.flights = self._replay(self.flights)
                deadline = time.monotonic() + timeout
            elif isinstance(message, SYNAPSE):
                if self._progress(message):
                    deadline, stalls = time.monotonic() + timeout, 0
            else:
                self._aside(message)

    def _stalled(self, stalls: int, exc: Stalled) -> int:
        """No batch moved for the stall timeout: replay them, or fail their jobs once they stalled
        MAX_REPLAYS times running (the server goes on with the next). Returns the stalls running."""
        if stalls < MAX_REPLAYS:
            self.log.warning("samples %s stalled (%s): dropping and replaying", list(self.flights), exc)
            self.flights = self._replay(self.flights)
            return stalls
        self.log.error("samples %s stalled %d times: failing their requests", list(self.flights), stalls)
        self.recover(list(self.flights))
        for flight in self.flights.values():
            for job, _, _ in cast(Batch, flight).pieces:
                job.fail("the network stalled")
        self.flights = {}
        return 0

    def _progress(self, message: wire.Synapse) -> bool:
        """Take one synapse message; True if it moved a batch on (each answered once its outputs are
        in). A frame may carry several batches of the same link."""
        moved = self._take(self.flights, message)
        for sample in moved:
            if self.flights[sample].done(len(self.inputs)):
                self._answer(cast(Batch, self.flights.pop(sample)))
        return bool(moved)

    def _admit(self) -> None:
        """Launch waiting rows, up to `batch` a message and `in_flight` batches in the network."""
        while self.waiting and len(self.flights) < self.in_flight:
            batch = self._next_batch()
            if batch is not None:
                (sample,) = self._launch([batch])
                self.flights[sample] = batch

    def _next_batch(self) -> Batch | None:
        """The next `batch` rows waiting, across jobs in the order they came; None if only failed
        jobs were waiting."""
        pieces, parts, room = [], [], self.batch
        while self.waiting and room:
            job = self.waiting[0]
            if job.future.done():  # failed while it waited
                self.waiting.popleft()
                continue
            count = min(room, len(job.rows) - job.launched)
            pieces.append((job, job.launched, count))
            parts.append(job.rows[job.launched : job.launched + count])
            job.launched += count
            room -= count
            if job.launched == len(job.rows):
                self.waiting.popleft()
        if not parts:
            return None
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return Batch(np.arange(len(x)), x, x[:, :0], wire.INFER, pieces=pieces)

    def _answer(self, flight: Batch) -> None:
        """Hand each job its rows' outputs; a job whose last rows these were gets its answer."""
        assert flight.output is not None  # a done flight's outputs are in
        outputs, offset = flight.output.T, 0
        for job, first, count in flight.pieces:
            job.outputs[first : first + count] = outputs[offset : offset + count]
            offset += count
            job.left -= count
            if job.left == 0 and not job.future.done():
                job.future.set_result(job.outputs)
                self.rows += len(job.rows)

    def finish(self) -> None:
        """Fail every job not answered: the server is going down."""
        jobs = [job for flight in self.flights.values() for job, _, _ in cast(Batch, flight).pieces]
        for job in [*jobs, *self.waiting, *self.inlet.close()]:
            job.fail("the server is shutting down")
        self.flights, self.waiting = {}, collections.deque()


# -- the process ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How the server listens and feeds the network."""

    host: str
    port: int
    in_flight: int  # batches in the network at once
    batch: int  # rows per synapse message, at most
    model: str  # the run (or model file) served, for GET /


def describe(config: Config, options: Options) -> dict:
    """GET /: the model served and how."""
    layers = [
        {"name": layer.name, "size": layer.size, "activation": config.activation(i)}
        for i, layer in enumerate(config.network.layers)
    ]
    return {
        "model": options.model,
        "layers": layers,
        "inputs": config.layer_sizes[0],
        "outputs": config.layer_sizes[-1],
        "loss": config.training.loss,
        "neurons": sum(config.layer_sizes),
        "in_flight": options.in_flight,
        "batch": options.batch,
        "max_rows": front.MAX_ROWS,
        "max_body_bytes": front.MAX_BODY_BYTES,
    }


def serve_network(config: Config, site: Site, options: Options, keys: curve.Keypair | None = None) -> None:
    """Process entry point of the serving coordinator: bind the HTTP front, wire the neurons, say
    where it serves, answer requests until SIGTERM. A port it cannot bind is one line and exit 2."""
    run = RunDir(site.run_dir)
    log = open_log(COORDINATOR, run.log(COORDINATOR), site.log_level, site.log_max_bytes, site.log_backups)
    log.info("start pid=%d: serving %s", os.getpid(), options.model)
    server = Server(config, site, log, options.in_flight, options.batch, keys)
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    http = None
    status = "failed"
    try:
        http = front.Front((options.host, options.port), server, describe(config, options))
        server.connect()
        http.start()
        log.info("serving %s", http.url)
        print(f"exmachina: serving {http.url}  (Ctrl-C to stop)", flush=True)
        server.serve()
        status = "stopped"
    except OSError as exc:
        where = f"{options.host}:{options.port}"
        log.error("cannot serve on %s: %s", where, exc)
        print(f"exmachina: cannot serve on {where}: {exc.strerror or exc} (try --port 0)", file=sys.stderr)
        raise SystemExit(2) from None
    except Stopped:
        status = "stopped"
    except Stalled as exc:
        log.error("start-up stalled: %s", exc)
        raise SystemExit(3) from None
    finally:
        _close(server, http, run, log, status)


def _close(server: Server, http: front.Front | None, run: RunDir, log: Log, status: str) -> None:
    """Stop listening, fail what is left, close every socket, leave a summary."""
    if http is not None:
        http.close()
    server.finish()
    server.close()
    summary = {
        "status": status,
        "requests": server.requests,
        "rows": server.rows,
        "restarts": server.restarts,
    }
    write_json(run.summary, summary)
    log.info("end: %s", summary)
    close_log(log)
