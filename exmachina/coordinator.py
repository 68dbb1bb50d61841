"""The coordinator: wires the network, feeds samples, turns outputs into errors, keeps the score.

It is the far end of every edge synapse: the sensor of each input neuron and the target of each
output neuron. Exact online SGD keeps one sample in flight: the next sample starts only when every
input neuron has sent its error back, i.e. when every weight in the network has been updated.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from exmachina import transport, wire
from exmachina.activations import LOSSES, accuracy, predictions
from exmachina.config import Config
from exmachina.datasets import Dataset, epoch_order
from exmachina.logs import close_log, open_log
from exmachina.parameters import Parameters
from exmachina.progress import Progress
from exmachina.runs import RunDir, Site, write_json
from exmachina.topology import COORDINATOR, layer_ids

SHOWN_PREDICTIONS = 20  # kept in predictions.json for the viewer
RECENT = 200  # the original's progress figure: share correct of the last 200 training predictions
STARTUP_TIMEOUT_S = 60.0
STOP_SNAPSHOT_TIMEOUT_S = 1.0  # a stopped run's last snapshot; the lifeline allows 2 s in all


class Stalled(RuntimeError):
    """No message arrived within the stall timeout: a neuron is gone or wedged."""


class Stopped(Exception):
    """SIGTERM arrived: finish cleanly (save what the neurons know) and exit."""


@dataclass
class Peer:
    id: str
    pid: int
    endpoints: dict[str, str]
    control: zmq.Socket | None = None


@dataclass
class Score:
    losses: list[float] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)


class Coordinator:
    def __init__(self, config: Config, site: Site, log: logging.Logger) -> None:
        self.config = config
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
        self.ctx = transport.context(sockets=2 * len(self.all_ids) + len(self.inputs) + len(self.outputs) + 4)
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, transport.HIGH_WATER_MARK)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(site.coordinator)
        self.sensors: list[zmq.Socket] = []
        self.error_links: list[zmq.Socket] = []
        self.sample = 0
        self.stop_requested = False
        self.backlog: collections.deque[list] = collections.deque()
        self.dropped = 0
        self.stats: dict[str, dict] = {}  # latest STATS of each neuron
        self.stats_due = 0.0
        self.recent_predictions: collections.deque[dict] = collections.deque(maxlen=SHOWN_PREDICTIONS)

    # -- messages -------------------------------------------------------------------------------

    def _receive(self, deadline: float) -> list:
        """The next well-formed message; raises Stalled past the deadline, Stopped on SIGTERM."""
        while True:
            if self.stop_requested:
                raise Stopped
            if self.backlog:
                return self.backlog.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Stalled(f"no message for {self.config.training.stall_timeout:.0f} s")
            if not self.inbox.poll(min(remaining, 0.5) * 1000):
                continue
            for frame in transport.drain(self.inbox):
                try:
                    self.backlog.append(wire.decode(frame))
                except wire.WireError as exc:
                    self.dropped += 1
                    self.log.warning("dropped message (%s): %r", exc, frame[:64])

    def _gather(self, kind: int, sample: int, count: int, timeout: float) -> np.ndarray:
        """Wait for `count` synapse messages of one kind and sample; returns values by sender."""
        values, seen = np.zeros(count), 0
        deadline = time.monotonic() + timeout
        while seen < count:
            message = self._receive(deadline)
            if message[0] == kind and message[1] == sample and 0 <= message[2] < count:
                values[message[2]] = message[3]
                seen += 1
                deadline = time.monotonic() + timeout
            else:
                self._aside(message)
        return values

    def _aside(self, message: list) -> None:
        """A message that is not the one being waited for."""
        if message[0] == wire.STATS:
            self.stats[message[1]] = message[2]
            now = time.monotonic()
            if now >= self.stats_due:
                self.stats_due = now + self.site.stats_interval
                self.write_stats()
            return
        self.log.warning("unexpected %s", wire.describe(message))

    def write_stats(self) -> None:
        me = {"pid": os.getpid(), "time": time.time(), "sample": self.sample, "dropped": self.dropped}
        write_json(self.run.stats, {"coordinator": me, "neurons": self.stats})

    # -- start-up -------------------------------------------------------------------------------

    def connect(self) -> None:
        """Collect every neuron's HELLO, send each its wiring, wait until all are READY."""
        started = time.monotonic()
        deadline = started + STARTUP_TIMEOUT_S
        while len(self.peers) < len(self.all_ids):
            message = self._receive(deadline)
            if message[0] != wire.HELLO:
                self._aside(message)
                continue
            _, version, nid, pid, endpoints = message
            if version != wire.VERSION or nid not in self.all_ids:
                self.log.warning("ignored hello from %s (protocol %s)", nid, version)
                continue
            self.peers[nid] = Peer(nid, pid, endpoints)
        for peer in self.peers.values():
            peer.control = transport.push(self.ctx, peer.endpoints["control"], transport.CONTROL_LINGER_MS)
        for nid in self.all_ids:
            self._wire(nid)
        self.sensors = [transport.push(self.ctx, self.peers[n].endpoints["forward"]) for n in self.inputs]
        self.error_links = [
            transport.push(self.ctx, self.peers[n].endpoints["backward"]) for n in self.outputs
        ]
        ready: set[str] = set()
        while len(ready) < len(self.all_ids):
            message = self._receive(deadline)
            if message[0] == wire.READY:
                ready.add(message[1])
            else:
                self._aside(message)
        self.log.info("%d neurons wired and ready in %.3f s", len(ready), time.monotonic() - started)

    def _wire(self, nid: str) -> None:
        """Tell one neuron where its synapses lead: forward endpoints below it, error endpoints above."""
        layer, last = self.layer_of[nid], len(self.config.layer_sizes) - 1
        me = [self.site.coordinator]
        downstream = (
            me if layer == last else [self.peers[n].endpoints["forward"] for n in self.layers[layer + 1]]
        )
        upstream = me if layer == 0 else [self.peers[n].endpoints["backward"] for n in self.layers[layer - 1]]
        self.peers[nid].control.send(wire.encode(wire.WIRE, wire.VERSION, downstream, upstream))

    # -- one sample -----------------------------------------------------------------------------

    def present(self, x: np.ndarray, kind: int) -> np.ndarray:
        """Send one input vector through the network; returns the output activities."""
        self.sample += 1
        for sensor, value in zip(self.sensors, x.tolist()):
            sensor.send(wire.encode(kind, self.sample, 0, value))
        return self._gather(kind, self.sample, len(self.outputs), self.config.training.stall_timeout)

    def learn(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """One exact online SGD step through the whole network."""
        output = self.present(x, wire.FORWARD)
        gradient = self.loss.grad(output, y)
        for link, value in zip(self.error_links, gradient.tolist()):
            link.send(wire.encode(wire.BACKWARD, self.sample, 0, value))
        self._gather(wire.BACKWARD, self.sample, len(self.inputs), self.config.training.stall_timeout)
        return self.loss.value(output, y), output

    def evaluate(self, data: Dataset) -> tuple[float, float, np.ndarray]:
        """(mean loss, accuracy, outputs) of a forward-only pass: nothing learns."""
        outputs = np.array([self.present(x, wire.INFER) for x in data.inputs])
        losses = [self.loss.value(o, y) for o, y in zip(outputs, data.targets)]
        return float(np.mean(losses)), accuracy(outputs, data.targets), outputs

    def snapshot(self, timeout: float | None = None) -> Parameters:
        """Every weight and bias, as the neurons themselves report them."""
        request = self.sample
        for peer in self.peers.values():
            peer.control.send(wire.encode(wire.SNAPSHOT, request))
        sizes = self.config.layer_sizes
        axons = [np.zeros((sizes[i], sizes[i + 1])) for i in range(len(sizes) - 1)]
        biases = [np.zeros(s) for s in sizes]
        pending = set(self.peers)
        deadline = time.monotonic() + (timeout or self.config.training.stall_timeout)
        while pending:
            message = self._receive_unstoppable(deadline)
            if message[0] != wire.STATE or message[2] != request or message[1] not in pending:
                self._aside(message)
                continue
            _, nid, _, bias, weights, _updates = message
            pending.discard(nid)
            layer = self.layer_of[nid]
            index = self.layers[layer].index(nid)
            biases[layer][index] = bias
            if layer < len(sizes) - 1:
                axons[layer][index] = weights
        c = self.config
        layers = range(len(sizes))
        return Parameters(
            axons,
            biases,
            [c.activation(i) for i in layers],
            [c.learns_bias(i) for i in layers],
            [layer.name for layer in c.network.layers],
        )

    def publish(self, epoch: int, samples: int) -> None:
        """Live state for the viewer: the neurons' own weights and the latest predictions."""
        self.snapshot().save(self.run.snapshot)
        write_json(
            self.run.predictions,
            {
                "epoch": epoch,
                "samples": samples,
                "time": time.time(),
                "recent": list(self.recent_predictions),
            },
        )

    def _receive_unstoppable(self, deadline: float) -> list:
        stop, self.stop_requested = self.stop_requested, False
        try:
            return self._receive(deadline)
        finally:
            self.stop_requested = self.stop_requested or stop

    # -- the whole run --------------------------------------------------------------------------

    def train(self, train: Dataset, holdout: Dataset | None, progress: Progress) -> dict:
        c = self.config
        t = c.training
        recent: collections.deque[bool] = collections.deque(maxlen=RECENT)
        started = time.monotonic()
        samples = 0
        status, epochs_done, epoch_loss = "completed", 0, float("nan")
        best = None
        try:
            for epoch in range(t.epochs):
                epoch_started = time.monotonic()
                losses, outputs = [], []
                order = epoch_order(c.seed, epoch, len(train), t.shuffle)
                for row in order:
                    loss, output = self.learn(train.inputs[row], train.targets[row])
                    losses.append(loss)
                    outputs.append(output)
                    predicted, wanted = predictions(output)[0], predictions(train.targets[row])[0]
                    recent.append(bool(predicted == wanted))
                    self.recent_predictions.append(
                        {
                            "row": int(row),
                            "input": train.inputs[row].tolist(),
                            "output": output.tolist(),
                            "predicted": int(predicted),
                            "target": int(wanted),
                        }
                    )
                    samples += 1
                    if c.runtime.snapshot_every and samples % c.runtime.snapshot_every == 0:
                        self.publish(epoch + 1, samples)
                epochs_done = epoch + 1
                epoch_loss = float(np.mean(losses))
                elapsed = time.monotonic() - epoch_started
                record = {
                    "event": "epoch",
                    "epoch": epochs_done,
                    "loss": epoch_loss,
                    "accuracy": accuracy(np.array(outputs), train.targets[order]),
                    "recent_accuracy": float(np.mean(recent)),
                    "samples": samples,
                    "samples_per_s": len(order) / elapsed if elapsed > 0 else 0.0,
                    "elapsed": time.monotonic() - started,
                }
                if holdout is not None:
                    record["holdout_loss"], record["holdout_accuracy"], _ = self.evaluate(holdout)
                    if best is None or record["holdout_accuracy"] > best[0]:
                        best = (record["holdout_accuracy"], epochs_done)
                        self.snapshot().save(self.run.path / "best.npz")
                self.run.append_metrics(record)
                self.publish(epochs_done, samples)
                progress.epoch(record)
                if t.target_loss is not None and epoch_loss < t.target_loss:
                    self.log.info("target loss %.4g reached after epoch %d", t.target_loss, epochs_done)
                    break
        except Stopped:
            status = "stopped"
            self.log.info("stop requested during sample %d: saving what the neurons know", self.sample)
        except Stalled as exc:
            status = "stalled"
            self.log.error("sample %d stalled: %s", self.sample, exc)
        train_time = time.monotonic() - started
        summary = {
            "status": status,
            "epochs": epochs_done,
            "samples": samples,
            "train_loss": epoch_loss,
            "train_time_s": train_time,
            "samples_per_s": samples / train_time if train_time else 0.0,
        }
        if status == "stopped":
            # Neurons may be going down too (the whole tree is stopping): a short, bounded try.
            self.stop_requested = False
            try:
                self.snapshot(timeout=STOP_SNAPSHOT_TIMEOUT_S).save(self.run.model)
            except Stalled:
                self.log.warning("neurons did not answer the final snapshot: model.npz not written")
        elif status == "completed":
            self.snapshot().save(self.run.model)
            summary["final_loss"], summary["accuracy"], _ = self.evaluate(train)
            if holdout is not None:
                summary["holdout_loss"], summary["holdout_accuracy"], _ = self.evaluate(holdout)
                summary["best_holdout_accuracy"], summary["best_epoch"] = best or (None, None)
        return summary


def coordinate(config: Config, site: Site, train: Dataset, holdout: Dataset | None) -> None:
    """Process entry point of the coordinator."""
    run = RunDir(site.run_dir)
    log = open_log(COORDINATOR, run.log(COORDINATOR), site.log_level, site.log_max_bytes, site.log_backups)
    log.info(
        "start pid=%d: %d training rows, %s held out",
        os.getpid(),
        len(train),
        len(holdout) if holdout is not None else "none",
    )
    coordinator = Coordinator(config, site, log)
    signal.signal(signal.SIGTERM, lambda *_: setattr(coordinator, "stop_requested", True))
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
    finally:
        progress.close()
        summary.update(
            wall_time_s=time.monotonic() - started,
            run_dir=str(run.path),
            neurons=len(coordinator.all_ids),
            dropped_messages=coordinator.dropped,
        )
        run.write_summary(summary)
        log.info("end: %s", summary)
        coordinator.ctx.destroy(linger=0)  # nothing it still queues is owed to anyone
        transport.release([site.coordinator])
        close_log(log)
    if summary["status"] == "stalled":
        raise SystemExit(3)
