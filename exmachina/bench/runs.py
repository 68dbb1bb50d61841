"""The process network's rows: train through the real entry point (`python -m exmachina.supervisor
--config ...`) in a subprocess with a timeout and measure it, and time its start-up and memory.
Whatever a row started is stopped and checked for before it returns."""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

from exmachina.bench.tasks import messages_per_batch, xor_config
from exmachina.bench.tree import STOP_GRACE_S, STOP_PER_PROCESS_S, Tree

NEURON_TITLE = "exmachina: neuron "
READY_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO\s+coordinator\s+(\d+) neurons wired and ready in ([\d.]+) s"
)
POLL_S = 0.02  # how often a run's stats.json is checked for a fresh reading
TREE_EVERY_S = 1.0  # the process tree's CPU is otherwise read this often (each read walks /proc)


class RowFailed(RuntimeError):
    """A bench row that did not produce its figures (the message says why)."""


@contextlib.contextmanager
def _supervised(
    config: dict, workdir: Path, sockets: Path, cpus: set[int] | None = None
) -> Iterator[tuple[Tree, Path]]:
    """Start `python -m exmachina.supervisor --config` on `config` in its own directory; on the way out,
    whatever happened, nothing it started is left running. Yields the tree and the runs directory."""
    workdir.mkdir(parents=True)
    runs = workdir / "runs"
    config = {**config, "runtime": {**config.get("runtime", {}), "runs_dir": str(runs)}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "EXMACHINA_SOCKET_DIR": str(sockets), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "exmachina.supervisor", "--config", str(path)]
    processes = sum(layer["size"] for layer in config["network"]["layers"]) + 3
    tree = Tree(command, workdir, env, cpus, STOP_GRACE_S + STOP_PER_PROCESS_S * processes)
    leaked: list[int] = []
    try:
        yield tree, runs
    finally:
        leaked = tree.close()
    if leaked:
        raise RowFailed(f"processes left behind and killed: {leaked}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_network(
    name: str,
    config: dict,
    workdir: Path,
    sockets: Path,
    timeout: float,
    cpus: set[int] | None = None,
) -> dict:
    """Train through the real entry point and measure it: samples/s (from summary.json, and inside
    epochs from metrics.jsonl), the tree's CPU per synapse message while it trained, peak PSS.

    The CPU window runs between two of the coordinator's stats.json readings taken while training
    (its `updates` counts completed batches), so start-up, wiring and shutdown are not in it."""
    training = config["training"]
    row: dict[str, Any] = {
        "name": name,
        "sizes": [layer["size"] for layer in config["network"]["layers"]],
        "batch_size": training.get("batch_size", 1),
        "max_in_flight": training.get("max_in_flight", 1),
        "cpus": sorted(cpus) if cpus else None,
    }
    with _supervised(config, workdir, sockets, cpus) as (tree, runs):
        readings = _watch_training(tree, runs / "latest" / "stats.json", timeout)
        row["run_s"] = time.monotonic() - tree.started
        summary, metrics = _finished_run(tree, runs / "latest")
    row.update(_rates(row, summary, metrics))
    row.update(_cpu_per_message(readings, summary["updates"], row["messages_per_batch"]))
    return row


def _watch_training(tree: Tree, stats: Path, timeout: float) -> list[tuple[int, float]]:
    """Until the run ends (or the time is up): (updates, tree CPU s) at each fresh stats.json, and
    the tree's CPU read in between so that no process of it goes unseen."""
    readings: list[tuple[int, float]] = []
    seen = None
    deadline = tree.started + timeout
    while tree.running():
        if time.monotonic() > deadline:
            tree.stop()
            raise RowFailed(f"timed out after {timeout:g} s")
        try:
            stamp = stats.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen = stamp
            reading = _read_json(stats)
            updates = ((reading or {}).get("coordinator") or {}).get("updates")
            cpu = tree.cpu_seconds()
            if isinstance(updates, int):
                readings.append((updates, cpu))
        elif time.monotonic() - tree.last_read > TREE_EVERY_S:
            tree.cpu_seconds()
        time.sleep(POLL_S)
    return readings


def _finished_run(tree: Tree, run: Path) -> tuple[dict, list[dict]]:
    """The summary and metrics of a run that completed; RowFailed, with the end of its output, if not."""
    summary = _read_json(run / "summary.json")
    if (
        tree.proc.returncode != 0
        or not summary
        or summary.get("status") != "completed"
        or not summary.get("samples_per_s")
    ):
        status = (summary or {}).get("status", "no summary.json")
        raise RowFailed(f"exit code {tree.proc.returncode}, status {status}: {_tail(tree.output())}")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return summary, metrics


def _rates(row: dict, summary: dict, metrics: list[dict]) -> dict:
    """Samples/s overall and inside epochs, and the synapse messages they stand for."""
    epochs = [m for m in metrics if m.get("event") == "epoch"]
    epoch_time = sum(_epoch_samples(epochs, i) / e["samples_per_s"] for i, e in enumerate(epochs))
    per_batch = messages_per_batch(row["sizes"])
    per_sample = per_batch / row["batch_size"]
    return {
        "status": "ok",
        "samples": summary["samples"],
        "updates": summary["updates"],
        "samples_per_s": summary["samples_per_s"],
        "in_epoch_samples_per_s": summary["samples"] / epoch_time if epoch_time > 0 else None,
        "train_time_s": summary["train_time_s"],
        "wall_time_s": summary["wall_time_s"],
        "peak_pss_mb": summary.get("peak_pss_mb"),
        "holdout_accuracy": summary.get("holdout_accuracy"),
        "messages_per_batch": per_batch,
        "messages_per_sample": per_sample,
        "synapse_messages_per_s": summary["samples_per_s"] * per_sample,
    }


def _cpu_per_message(readings: list[tuple[int, float]], updates: int, per_batch: int) -> dict:
    """The tree's CPU over the synapse messages of the batches completed inside the training window."""
    window = _training_window(readings, updates)
    if window is None:
        return {"cpu_s": None, "cpu_messages": None, "cpu_us_per_message": None, "cpu_window": "too short"}
    cpu, batches = window
    return {
        "cpu_s": cpu,
        "cpu_messages": batches * per_batch,
        "cpu_us_per_message": cpu / (batches * per_batch) * 1e6,
        "cpu_window": f"{len(readings)} readings, {batches} of {updates} batches",
    }


def _epoch_samples(epochs: list[dict], i: int) -> int:
    return epochs[i]["samples"] - (epochs[i - 1]["samples"] if i else 0)


def _training_window(readings: list[tuple[int, float]], final: int) -> tuple[float, int] | None:
    """(CPU s, batches) between the first and last readings taken strictly inside training."""
    inside = [(u, c) for u, c in readings if 0 < u < final]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (u0, c0), (u1, c1) = inside[0], inside[-1]
    return c1 - c0, u1 - u0


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-400:]


def startup_probe(neurons: int, workdir: Path, sockets: Path, timeout: float, settle_s: float = 1.0) -> dict:
    """Time from launch until the coordinator has every neuron wired and READY, then unique memory
    (USS) per neuron while the network trains, and the tree's peak PSS. The network is XOR shaped
    2-(N-3)-1; it trains until it has been measured, then gets SIGTERM like Ctrl-C."""
    config = xor_config(400_000, hidden=neurons - 3, log_level="info")  # info: the "ready" line
    row: dict[str, Any] = {"name": f"start-up {neurons} neurons", "neurons": neurons}
    with _supervised(config, workdir, sockets) as (tree, runs):
        match = _await_ready(tree, runs / "latest" / "neurons" / "coordinator.log", timeout)
        ready_at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        row.update(
            ready_s=ready_at - tree.launched_at,
            wiring_s=float(match.group(3)),
            wired=int(match.group(2)),
        )
        time.sleep(settle_s)
        uss, pss = _memory(tree)
        if not uss:
            raise RowFailed("no neuron process found to measure")
        tree.stop()
        summary = _read_json(runs / "latest" / "summary.json") or {}
    mb = [u / 2**20 for u in uss]
    row.update(
        status="ok",
        neurons_measured=len(mb),
        uss_mb_median=statistics.median(mb),
        uss_mb_mean=statistics.fmean(mb),
        uss_mb_max=max(mb),
        tree_pss_mb=pss / 2**20,
        peak_pss_mb=summary.get("peak_pss_mb"),
    )
    return row


def _await_ready(tree: Tree, log: Path, timeout: float) -> re.Match:
    """The coordinator's "wired and ready" line, once its log has it."""
    deadline = tree.started + timeout
    match = None
    while match is None:
        if not tree.running():
            raise RowFailed(f"exited {tree.proc.returncode} before ready: {_tail(tree.output())}")
        if time.monotonic() > deadline:
            raise RowFailed(f"not ready after {timeout:g} s")
        with contextlib.suppress(OSError):
            match = next(filter(None, map(READY_LINE.match, log.read_text().splitlines())), None)
        if time.monotonic() - tree.last_read > TREE_EVERY_S:
            tree.cpu_seconds()  # remembers the pids, for the final check
        time.sleep(0.05)
    return match


def _memory(tree: Tree) -> tuple[list[int], int]:
    """(USS of each neuron process, PSS of the whole tree) in bytes, now."""
    uss, pss = [], 0
    for proc in tree.members():
        with contextlib.suppress(psutil.Error):
            memory = proc.memory_full_info()
            pss += memory.pss
            if " ".join(proc.cmdline()).startswith(NEURON_TITLE):
                uss.append(memory.uss)
    return uss, pss
