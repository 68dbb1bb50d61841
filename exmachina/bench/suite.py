"""`python -m exmachina.bench [--quick] [--out FILE]`: how fast the process network is, and against what.

Every figure comes from one invocation, so that ratios compare like with like on a shared, noisy
machine: the raw ZeroMQ ceiling (two processes, one ipc link), the process network on XOR 2-2-1 and
Semeion 256-8-10, the dense NumPy reference on the very same task, CPU per synapse message, start-up
time and memory per neuron, mini-batches and pipelining, and 1 core against 2.

Training runs go through the real entry point (`python -m exmachina.supervisor --config ...`) in a
subprocess with a timeout; a row that fails or times out is reported as failed and the bench goes on.
Whatever a row started is stopped and checked for before the next row begins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
import yaml
import zmq
from rich.console import Console
from rich.table import Table

from exmachina.bench import ipc as bench_ipc
from exmachina.config import config_from_dict
from exmachina.data import datasets
from exmachina.model import parameters
from exmachina.model.reference import Reference

REPO = Path(__file__).resolve().parents[2]
SEMEION = REPO.parent / "shared" / "data" / "semeion.data"
DEFAULT_OUT = Path("bench") / "results.json"
NEURON_TITLE = "exmachina: neuron "
READY_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO\s+coordinator\s+(\d+) neurons wired and ready in ([\d.]+) s"
)
POLL_S = 0.02  # how often a run's stats.json is checked for a fresh reading
TREE_EVERY_S = 1.0  # the process tree's CPU is otherwise read this often (each read walks /proc)
STOP_GRACE_S = 20.0  # SIGTERM to SIGKILL: the supervisor stops its children one by one, so this
STOP_PER_PROCESS_S = 0.05  # ... plus this per process of the tree (a busy machine makes each slow)


@dataclass(frozen=True)
class Profile:
    """How much of everything one invocation measures: `--quick` for a look, full for a report."""

    name: str
    transport_messages: int
    round_trips: int
    xor_samples: int
    semeion_samples: int  # online 256-8-10; 0 skips every 256-8-10 row
    modes: tuple[str, ...]  # of MODES, on 256-8-10
    batch_samples: int  # the batched modes (a multiple of 32)
    pipelined_samples: int  # the pipelined mode and the sweep over K
    k_sweep: tuple[int, ...]  # () skips the sweep
    startup_sizes: tuple[int, ...]
    core_samples_xor: int
    core_samples_semeion: int  # 0 skips 256-8-10 on 1 and 2 cores
    reference_min_s: float  # the reference repeats epochs for at least this long
    log_samples: int = 0  # XOR at log levels off, info and debug; 0 skips
    full_batch_epochs: int = 0  # the full-batch mode: epochs over every Semeion row, an update each
    bare_samples: int = 20  # the bare networks of the training shapes (256-8-10 only with semeion)


# Modes of training 256-8-10: (batch size, batches in flight). One per network run: each run starts and
# stops 276 processes (about 7 s on this 2-core machine), which is why --quick leaves out the last two.
SEMEION_ROWS = 1593
MODES = {
    "online": (1, 1),
    "batch 32": (32, 1),
    "in-flight 4": (1, 4),
    "batch 32 + in-flight 4": (32, 4),
    "full batch": (SEMEION_ROWS, 1),  # gradient descent on the whole data set: an update an epoch
}
QUICK = Profile(
    name="quick",
    transport_messages=100_000,
    round_trips=2_000,
    xor_samples=600,
    semeion_samples=20,
    modes=("online", "batch 32", "in-flight 4"),
    batch_samples=128,
    pipelined_samples=20,
    k_sweep=(),
    startup_sizes=(100,),
    core_samples_xor=200,
    core_samples_semeion=0,
    reference_min_s=0.2,
)
FULL = Profile(
    name="full",
    transport_messages=500_000,
    round_trips=20_000,
    xor_samples=3_000,
    semeion_samples=300,
    modes=tuple(MODES),
    batch_samples=640,
    full_batch_epochs=12,
    pipelined_samples=150,
    k_sweep=(1, 2, 4, 8),
    startup_sizes=(100, 500, 1000),
    core_samples_xor=1_500,
    core_samples_semeion=80,
    reference_min_s=1.0,
    log_samples=2_000,
    bare_samples=150,
)


# -- the transport ceiling: two bare processes, one ipc link ---------------------------------------


def _start_worker(name: str, *args: Any) -> subprocess.Popen:
    code = "import sys; from exmachina.bench.ipc import main; main(sys.argv[1], sys.argv[2])"
    return subprocess.Popen(
        [sys.executable, "-c", code, name, json.dumps(args)],
        stdin=subprocess.PIPE,  # the sender holds its connection open until this closes
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish_workers(procs: list[subprocess.Popen], timeout: float) -> list[dict]:
    """Each worker's result line (raises if one fails or the time is up)."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {timeout:.3g} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err.strip()[-300:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL (each is alone in its session) and reap every worker still running."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.communicate()


def _await_bind(proc: subprocess.Popen, endpoint: str, deadline: float) -> None:
    """Wait until a worker has bound its ipc endpoint (the socket file exists), so that its peer's
    first messages are not queued for a receiver that is still starting."""
    path = Path(endpoint[len("ipc://") :])
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not bind {endpoint} (exit code {proc.poll()})")
        time.sleep(0.01)


def _paired(first: tuple, second: tuple, bound: str, timeout: float, cleanup: list[str]) -> list[dict]:
    """Start the binding worker, then its peer once bound; both results. Socket files are removed
    whatever happens (a killed worker cannot remove its own)."""
    deadline = time.monotonic() + timeout
    procs = [_start_worker(*first)]
    try:
        _await_bind(procs[0], bound, deadline)
        procs.append(_start_worker(*second))
        return _finish_workers(procs, max(0.1, deadline - time.monotonic()))
    finally:
        _kill(procs)
        for endpoint in cleanup:
            bench_ipc.unlink(endpoint)


def transport_ceiling(messages: int, sockets: Path, timeout: float = 60.0) -> dict:
    """Messages/s through one PUSH->PULL ipc link between two processes, msgpack at both ends: what
    the network's synapse traffic could reach if the neurons did nothing else."""
    endpoint = f"ipc://{sockets}/bench-ceiling"
    warmup = max(1, messages // 10)
    received, _ = _paired(
        ("pull", endpoint, warmup, messages),
        ("push", endpoint, warmup + messages),
        endpoint,
        timeout,
        [endpoint],
    )
    return {
        "messages": messages,
        "seconds": received["seconds"],
        "messages_per_s": messages / received["seconds"],
        "message_bytes": len(bench_ipc.synapse_message(0)),
    }


def ipc_latency(round_trips: int, sockets: Path, timeout: float = 60.0) -> dict:
    """Round-trip time of one small message between two processes over ipc (ping-pong)."""
    ping, pong = f"ipc://{sockets}/bench-ping", f"ipc://{sockets}/bench-pong"
    warmup = max(10, round_trips // 20)
    _, result = _paired(
        ("echo", ping, pong, warmup + round_trips),
        ("ping", pong, ping, warmup, round_trips),
        ping,
        timeout,
        [ping, pong],
    )
    return result


def bare_network(sizes: list[int], samples: int, sockets: Path, timeout: float) -> dict:
    """Samples/s of a bare network of this shape: the same processes, links and msgpack messages,
    neurons that only count and pass them on (bench_ipc). The floor of the stack on this machine: the
    process network can approach it, never pass it. Every process of it is killed by its session."""
    directory = Path(tempfile.mkdtemp(prefix="bare-", dir=sockets))
    proc = _start_worker("bare-network", sizes, str(directory), max(3, samples // 10), samples)
    try:
        (result,) = _finish_workers([proc], timeout)
    finally:
        _kill([proc])
        shutil.rmtree(directory, ignore_errors=True)
    result["messages_per_s"] = result["samples_per_s"] * messages_per_batch(sizes)
    return result


# -- the process network --------------------------------------------------------------------------


def messages_per_batch(sizes: list[int]) -> int:
    """Synapse messages one batch (one sample, online) costs, forward and backward: the coordinator
    to each input neuron, every layer to the next, each output neuron to the coordinator, and the
    same links again with errors on the way back."""
    links = sizes[0] + sum(a * b for a, b in zip(sizes, sizes[1:])) + sizes[-1]
    return 2 * links


def xor_config(samples: int, hidden: int = 2, log_level: str = "off") -> dict:
    """XOR on a 2-hidden-1 network; its 4 rows are an epoch, so `samples` makes whole epochs."""
    return {
        "name": "bench_xor",
        "seed": 1,
        "network": {
            "layers": [
                {"name": "input", "size": 2},
                {"name": "hidden", "size": hidden, "activation": "tanh"},
                {"name": "output", "size": 1, "activation": "logistic"},
            ]
        },
        "training": {"learning_rate": 0.5, "epochs": max(1, samples // 4)},
        "data": {"source": "xor"},
        "runtime": {"log_level": log_level},
    }


def semeion_config(
    samples: int, data: Path, batch_size: int = 1, max_in_flight: int = 1, epochs: int = 1
) -> dict:
    """The original job (configs/semeion-original.yaml), on `samples` seeded random rows."""
    return {
        "name": "bench_semeion",
        "seed": 1,
        "network": {
            "layers": [
                {
                    "name": "input",
                    "size": 256,
                    "activation": "logistic",
                    "bias_init": [-3.0, -1.0],
                    "learn_bias": False,
                },
                {"name": "hidden", "size": 8, "activation": "logistic"},
                {"name": "output", "size": 10, "activation": "logistic"},
            ],
            "weight_init": [-1.0, 1.0],
            "bias_init": [-3.0, -1.0],
            "learn_biases": False,
        },
        "training": {
            "learning_rate": 2.0,
            "epochs": epochs,
            "batch_size": batch_size,
            "max_in_flight": max_in_flight,
        },
        "data": {"source": "semeion", "path": str(Path(data).resolve()), "holdout": 0, "limit": samples},
        "runtime": {"log_level": "off"},
    }


def reference_rate(config: dict, min_samples: int, min_seconds: float) -> dict:
    """Samples/s of the dense NumPy reference on the same task: same data, initial weights, epoch
    order and batch size; it repeats epochs until it has run long enough to time."""
    c = config_from_dict(config)
    data = datasets.load(c)
    model = Reference(parameters.initial(c), c.training.loss, c.training.learning_rate)
    size = c.training.batch_size
    samples, epoch = 0, 0
    started = time.perf_counter()
    while True:
        order = datasets.epoch_order(c.seed, epoch, len(data), c.training.shuffle)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            model.train_batch(data.inputs[rows], data.targets[rows])
            samples += len(rows)
        epoch += 1
        seconds = time.perf_counter() - started
        if samples >= min_samples and seconds >= min_seconds:
            return {
                "samples": samples,
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "batch_size": size,
            }


class Tree:
    """A supervisor started by the bench, and every process under it.

    psutil cannot read a process once it is reaped, so each pid keeps the last CPU time read from it:
    the tree's total is the sum of those (user + system, all threads). Pids are remembered to make
    sure that none outlives the run."""

    def __init__(
        self,
        command: list[str],
        cwd: Path,
        env: dict,
        cpus: set[int] | None = None,
        grace: float = STOP_GRACE_S,
    ) -> None:
        self.grace = grace
        self.started = time.monotonic()
        self.launched_at = time.time()
        self.stdout = open(cwd / "stdout.txt", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.root = psutil.Process(self.proc.pid)
        self.procs: dict[int, psutil.Process] = {}
        self.cpu: dict[int, float] = {}
        self.last_read = 0.0

    def members(self) -> list[psutil.Process]:
        """The live tree now (remembered for CPU totals and for the final check)."""
        try:
            found = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            found = []
        for proc in found:
            self.procs.setdefault(proc.pid, proc)
        return found

    def cpu_seconds(self) -> float:
        self.members()
        for pid, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self.cpu[pid] = times.user + times.system
        self.last_read = time.monotonic()
        return sum(self.cpu.values())

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its children in order and removes their sockets); past the
        grace, SIGKILL the whole group and every process ever seen in the tree."""
        if self.running():
            self.members()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.members()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self, wait: float = 5.0) -> list[int]:
        """After the supervisor is gone: give the rest of the tree a moment to exit, then kill what is
        left by pid, including any process of its group never seen in the tree (one started just
        before a timeout). Returns the pids that had to be killed (a leak worth reporting)."""
        self.stop()
        deadline = time.monotonic() + wait
        while True:
            left = [p for p in [*self.procs.values(), *_group(self.proc.pid)] if _alive(p)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.stdout.close()
        return sorted({p.pid for p in left})

    def output(self) -> str:
        return Path(self.stdout.name).read_text(errors="replace")


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (the supervisor's session: it may be gone already)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
    sizes = [layer["size"] for layer in config["network"]["layers"]]
    training = config["training"]
    row: dict[str, Any] = {
        "name": name,
        "sizes": sizes,
        "batch_size": training.get("batch_size", 1),
        "max_in_flight": training.get("max_in_flight", 1),
        "cpus": sorted(cpus) if cpus else None,
    }
    readings: list[tuple[int, float]] = []  # (updates, tree CPU s) at each fresh stats.json
    with _supervised(config, workdir, sockets, cpus) as (tree, runs):
        stats, seen = runs / "latest" / "stats.json", None
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
        row["run_s"] = time.monotonic() - tree.started
        summary = _read_json(runs / "latest" / "summary.json")
        if (
            tree.proc.returncode != 0
            or not summary
            or summary.get("status") != "completed"
            or not summary.get("samples_per_s")
        ):
            status = (summary or {}).get("status", "no summary.json")
            raise RowFailed(f"exit code {tree.proc.returncode}, status {status}: {_tail(tree.output())}")
        metrics = [
            json.loads(line)
            for line in (runs / "latest" / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
    epochs = [m for m in metrics if m.get("event") == "epoch"]
    epoch_time = sum(_epoch_samples(epochs, i) / e["samples_per_s"] for i, e in enumerate(epochs))
    per_batch = messages_per_batch(sizes)
    row.update(
        status="ok",
        samples=summary["samples"],
        updates=summary["updates"],
        samples_per_s=summary["samples_per_s"],
        in_epoch_samples_per_s=summary["samples"] / epoch_time if epoch_time > 0 else None,
        train_time_s=summary["train_time_s"],
        wall_time_s=summary["wall_time_s"],
        peak_pss_mb=summary.get("peak_pss_mb"),
        messages_per_batch=per_batch,
        messages_per_sample=per_batch / row["batch_size"],
    )
    row["synapse_messages_per_s"] = row["samples_per_s"] * row["messages_per_sample"]
    window = _training_window(readings, summary["updates"])
    if window is None:
        row.update(cpu_s=None, cpu_messages=None, cpu_us_per_message=None, cpu_window="too short")
    else:
        cpu, batches = window
        row.update(
            cpu_s=cpu,
            cpu_messages=batches * per_batch,
            cpu_us_per_message=cpu / (batches * per_batch) * 1e6,
            cpu_window=f"{len(readings)} readings, {batches} of {summary['updates']} batches",
        )
    return row


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


# -- start-up and memory --------------------------------------------------------------------------


def startup_probe(neurons: int, workdir: Path, sockets: Path, timeout: float, settle_s: float = 1.0) -> dict:
    """Time from launch until the coordinator has every neuron wired and READY, then unique memory
    (USS) per neuron while the network trains, and the tree's peak PSS. The network is XOR shaped
    2-(N-3)-1; it trains until it has been measured, then gets SIGTERM like Ctrl-C."""
    config = xor_config(400_000, hidden=neurons - 3, log_level="info")  # info: the "ready" line
    row: dict[str, Any] = {"name": f"start-up {neurons} neurons", "neurons": neurons}
    with _supervised(config, workdir, sockets) as (tree, runs):
        log = runs / "latest" / "neurons" / "coordinator.log"
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
        ready_at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        row.update(
            ready_s=ready_at - tree.launched_at,
            wiring_s=float(match.group(3)),
            wired=int(match.group(2)),
        )
        time.sleep(settle_s)
        uss, pss = [], 0
        for proc in tree.members():
            with contextlib.suppress(psutil.Error):
                memory = proc.memory_full_info()
                pss += memory.pss
                if " ".join(proc.cmdline()).startswith(NEURON_TITLE):
                    uss.append(memory.uss)
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


# -- machine --------------------------------------------------------------------------------------


def machine_info() -> dict:
    """What the figures were measured on, and how busy it was (the machine may be shared)."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
        "sixteen_core_machine": "this is one" if usable >= 16 else f"not this one ({usable} usable cores)",
    }


# -- the whole bench ------------------------------------------------------------------------------


NOTES = [
    "The cores rows pin the same run to 1, 2, 4 ... of this machine's usable cores: 1 and 2 on the "
    "2-core machine, up to 16 on the 16-core one (see machine.sixteen_core_machine).",
    "samples_per_s is summary.json's (training time, epoch ends included); in_epoch_samples_per_s "
    "is metrics.jsonl's (inside epochs only).",
    "Messages per sample count every synapse message, forward and backward, coordinator links "
    "included; CPU per message is the whole tree's user+system CPU between two stats.json "
    "readings taken while training, over the messages of the batches completed in between.",
    "CPU µs/msg is '-' (null) where a run was too short for two stats.json readings inside "
    "training (they come once a second).",
    "Each epoch ends with a line in metrics.jsonl and the coordinator's scores (the last epoch also "
    "with every neuron's checkpoint): compare samples/s with in-epoch/s to see what that costs.",
    "The machine may be shared: see machine.load_average (start) and load_average_end.",
    "'of bare' is batches/s (samples/s online) over the rounds/s of the bare network of the same "
    "shape (transport.bare: the same processes, links and msgpack messages, one round in flight, "
    "neurons that only pass them on): the floor of this stack on this machine.",
]


class Bench:
    """Runs rows one after another; a row that raises is recorded as failed and the next one runs."""

    def __init__(
        self, profile: Profile, workdir: Path, sockets: Path, say: Callable[[str], None] = print
    ) -> None:
        self.profile, self.workdir, self.sockets, self.say = profile, workdir, sockets, say
        self.count = 0
        self.online_by_k: dict[int, dict] = {}  # 256-8-10 rows of batch size 1, by samples in flight

    def row(self, name: str, measure: Callable[[], dict]) -> dict:
        self.count += 1
        started = time.monotonic()
        self.say(f"  {name} ...")
        try:
            row = measure()
        except Exception as exc:  # a failed row must not stop the bench
            row = {"name": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        row["name"] = name
        row["bench_s"] = time.monotonic() - started
        stale = [p for p in self.sockets.rglob("*") if p.is_socket()]
        if stale:  # reported with this row, then removed so as not to be blamed on the next
            row["socket_files_left"] = [str(p) for p in stale]
            for path in stale:
                path.unlink(missing_ok=True)
        if row["status"] != "ok":
            self.say(f"  {name}: FAILED: {row.get('error')}")
        return row

    def network(
        self, name: str, config: dict, timeout: float, reference: bool = True, cpus: set[int] | None = None
    ) -> dict:
        def measure() -> dict:
            row = train_network(name, config, self.workdir / f"run{self.count}", self.sockets, timeout, cpus)
            if reference:
                ref = reference_rate(config, row["samples"], self.profile.reference_min_s)
                row["reference"] = ref
                row["reference_over_network"] = ref["samples_per_s"] / row["samples_per_s"]
            return row

        return self.row(name, measure)

    def transport(self) -> dict:
        p, sockets = self.profile, self.sockets
        ceiling = self.row(
            "ipc ceiling", lambda: {"status": "ok", **transport_ceiling(p.transport_messages, sockets)}
        )
        latency = self.row("ipc round trip", lambda: {"status": "ok", **ipc_latency(p.round_trips, sockets)})
        bare, timeout = [], 60 + p.bare_samples / 2

        def measure(sizes: list[int]) -> dict:
            return {"status": "ok", **bare_network(sizes, p.bare_samples, sockets, timeout)}

        for sizes in ([2, 2, 1], [256, 8, 10])[: 2 if p.semeion_samples else 1]:
            bare.append(self.row("bare " + "-".join(map(str, sizes)), lambda z=sizes: measure(z)))
        return {"ceiling": ceiling, "latency": latency, "bare": bare}

    def training(self, semeion: Path, ceiling: float | None, bare: list[dict] = ()) -> list[dict]:
        """XOR online, then 256-8-10 online, batched, pipelined and both, each with its reference;
        each set against the bare network of its shape."""
        p = self.profile
        rows = [self.network("xor 2-2-1 online", xor_config(p.xor_samples), 60 + p.xor_samples / 20)]
        if p.semeion_samples:
            for label in p.modes:
                batch, k = MODES[label]
                used, epochs = self._extent(batch, k)
                config = semeion_config(used, semeion, batch, k, epochs)
                row = self.network(
                    f"256-8-10 {label}", config, 90 + used * epochs / (2 if batch == 1 else 20)
                )
                rows.append(row)
                if batch == 1:
                    self.online_by_k[k] = row
        floors = {tuple(b["sizes"]): b["samples_per_s"] for b in bare if b["status"] == "ok"}
        for row in rows:
            if row["status"] == "ok" and ceiling:
                row["share_of_ceiling"] = row["synapse_messages_per_s"] / ceiling
            if row["status"] == "ok" and tuple(row["sizes"]) in floors:
                batches_per_s = row["samples_per_s"] / row["batch_size"]  # a bare round is one batch
                row["over_bare"] = batches_per_s / floors[tuple(row["sizes"])]
        return rows

    def _extent(self, batch: int, k: int) -> tuple[int, int]:
        """What one 256-8-10 mode trains on: (rows, epochs). Seeded random rows once, or every row
        for several epochs when the batch is the whole data set."""
        p = self.profile
        if batch == SEMEION_ROWS:
            return SEMEION_ROWS, p.full_batch_epochs
        return (p.batch_samples if batch > 1 else p.pipelined_samples if k > 1 else p.semeion_samples), 1

    def pipelining(self, semeion: Path) -> list[dict]:
        """Online 256-8-10 against K samples in flight; a K that training() measured is reused."""
        p, sweep = self.profile, []
        for k in p.k_sweep:
            if k in self.online_by_k:
                sweep.append({**self.online_by_k[k], "k": k, "reused": True})
                continue
            config = semeion_config(p.pipelined_samples, semeion, 1, k)
            row = self.network(f"256-8-10 K={k}", config, 90 + p.pipelined_samples / 2, reference=False)
            sweep.append({**row, "k": k})
        return sweep

    def logging(self, rounds: int = 3) -> list[dict]:
        """What a log level costs: the same XOR run with logging off, at info and at debug, taken in
        turn `rounds` times (so a change in the machine's load hits every level alike); the median
        run of each level is its row."""
        samples = self.profile.log_samples
        runs: dict[str, list[dict]] = {level: [] for level in ("off", "info", "debug")}
        for _ in range(rounds):
            for level, done in runs.items():
                config = xor_config(samples, log_level=level)
                done.append(self.network(f"xor log {level}", config, 60 + samples / 10, reference=False))
        rows = []
        for done in runs.values():
            ok = sorted((r for r in done if r["status"] == "ok"), key=lambda r: r["samples_per_s"])
            row = dict(ok[len(ok) // 2]) if ok else dict(done[0])
            row["runs_samples_per_s"] = [r.get("samples_per_s") for r in done]
            rows.append(row)
        return rows

    def startup(self) -> list[dict]:
        return [
            self.row(
                f"start-up {n}",
                lambda n=n: startup_probe(
                    n, self.workdir / f"startup{n}", self.sockets, timeout=60 + n * 0.15
                ),
            )
            for n in self.profile.startup_sizes
        ]

    def cores(self, semeion: Path) -> list[dict]:
        """The same run pinned to 1 core, 2, 4 ... up to every usable one (children inherit the
        affinity). Here that is 1 and 2; on the 16-core machine, 1 to 16."""
        p, usable = self.profile, sorted(os.sched_getaffinity(0))
        tasks = [("xor 2-2-1", xor_config(p.core_samples_xor), 60 + p.core_samples_xor / 20)]
        if p.core_samples_semeion:
            config = semeion_config(p.core_samples_semeion, semeion)
            tasks.append(("256-8-10 online", config, 90 + p.core_samples_semeion))
        pairs = []
        for task, config, timeout in tasks:
            pair: dict[str, Any] = {"task": task, "counts": core_counts(len(usable))}
            for n in pair["counts"]:
                name = f"{task} on {n} core{'s' * (n > 1)}"
                cpus = set(usable[:n])
                pair[f"cores_{n}"] = self.network(name, config, timeout, reference=False, cpus=cpus)
            one = pair["cores_1"]
            for n in pair["counts"][1:]:
                if one["status"] == pair[f"cores_{n}"]["status"] == "ok":
                    pair[f"speedup_{n}_over_1"] = pair[f"cores_{n}"]["samples_per_s"] / one["samples_per_s"]
            pairs.append(pair)
        return pairs


def core_counts(usable: int) -> list[int]:
    """1, 2, 4 ... below the usable cores, then all of them: [1, 2] here, [1, 2, 4, 8, 16] on 16."""
    counts = [1]
    while counts[-1] * 2 < usable:
        counts.append(counts[-1] * 2)
    return counts + [usable] if usable > 1 else counts


def run_bench(
    profile: Profile, out: Path, semeion: Path = SEMEION, say: Callable[[str], None] = print
) -> dict:
    """Every row of `profile`, then results.json at `out`; returns the results."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="exm-bench-"))
    sockets = Path(tempfile.mkdtemp(prefix="exb-", dir=os.environ.get("EXMACHINA_SOCKET_DIR") or None))
    results: dict[str, Any] = {
        "profile": asdict(profile),
        "started": datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "notes": NOTES,
    }
    bench = Bench(profile, workdir, sockets, say)
    try:
        say("transport")
        results["transport"] = bench.transport()
        say("training")
        ceiling = results["transport"]["ceiling"].get("messages_per_s")
        results["training"] = bench.training(semeion, ceiling, results["transport"]["bare"])
        if profile.k_sweep and profile.semeion_samples:
            say("pipelining")
            results["pipelining"] = bench.pipelining(semeion)
        if profile.log_samples:
            say("log levels")
            results["logging"] = bench.logging()
        say("start-up")
        results["startup"] = bench.startup()
        say("cores")
        results["cores"] = bench.cores(semeion)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        stale = [str(path) for path in sockets.rglob("*") if path.is_socket()]
        shutil.rmtree(sockets, ignore_errors=True)
    results["socket_files_left"] = stale
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = time.monotonic() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return results


# -- output ---------------------------------------------------------------------------------------


FAILED = "[red]failed[/]"  # the reasons are listed under the tables


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def render(results: dict, console: Console) -> None:
    """The results as tables, figures rounded for reading (results.json keeps them whole)."""
    m = results["machine"]
    console.print(
        f"[bold]exmachina bench ({results['profile']['name']})[/]  {m['cpu_count']} × {m['cpu_model']}, "
        f"Python {m['python']}, pyzmq {m['pyzmq']} / libzmq {m['libzmq']}, load {m['load_average'][0]:.1f}"
        f" -> {m.get('load_average_end', [0])[0]:.1f}, {results['wall_s']:.0f} s"
    )
    t = results.get("transport", {})
    c, lat = t.get("ceiling", {}), t.get("latency", {})
    console.print(
        f"transport ceiling (ipc PUSH->PULL, 2 processes, {c.get('message_bytes', '?')}-byte msgpack): "
        f"{_rate(c.get('messages_per_s'))} msgs/s;  ipc round trip: median "
        f"{_fmt(lat.get('median_us'), '.1f')} µs, p99 {_fmt(lat.get('p99_us'), '.1f')} µs"
    )
    for bare in t.get("bare", []):
        shown = (
            f"{_rate(bare['samples_per_s'])} samples/s online ({_rate(bare['messages_per_s'])} msgs/s)"
            if bare["status"] == "ok"
            else FAILED
        )
        console.print(f"{bare['name']} (same processes and messages, no math): {shown}")
    table = Table(title="training (process network vs dense reference, same task)", title_justify="left")
    for col in (
        "task",
        "samples",
        "samples/s",
        "in-epoch/s",
        "reference/s",
        "ref/net",
        "msgs/sample",
        "msgs/s",
        "of ceiling",
        "of bare",
        "CPU µs/msg",
        "peak PSS MB",
    ):
        table.add_column(col, justify="left" if col == "task" else "right")
    for row in results.get("training", []):
        if row["status"] != "ok":
            table.add_row(row["name"], FAILED)
            continue
        ref = row.get("reference", {})
        table.add_row(
            row["name"],
            str(row["samples"]),
            _rate(row["samples_per_s"]),
            _rate(row.get("in_epoch_samples_per_s")),
            _rate(ref.get("samples_per_s")),
            _fmt(row.get("reference_over_network"), ",.0f") + "×",
            _count(row["messages_per_sample"]),
            _rate(row["synapse_messages_per_s"]),
            _fmt(100 * row["share_of_ceiling"], ".1f") + "%" if row.get("share_of_ceiling") else "-",
            _fmt(row.get("over_bare"), ".2f") + "×" if row.get("over_bare") else "-",
            _fmt(row.get("cpu_us_per_message"), ".1f"),
            _fmt(row.get("peak_pss_mb"), ",.0f"),
        )
    console.print(table)
    if results.get("pipelining"):
        table = Table(title="pipelining, 256-8-10 online, K samples in flight", title_justify="left")
        for col in ("K", "samples", "samples/s", "vs K=1", "CPU µs/msg"):
            table.add_column(col, justify="right")
        base = next((r for r in results["pipelining"] if r.get("k") == 1 and r["status"] == "ok"), None)
        for row in results["pipelining"]:
            if row["status"] != "ok":
                table.add_row(str(row.get("k")), FAILED)
                continue
            gain = row["samples_per_s"] / base["samples_per_s"] if base else None
            table.add_row(
                str(row["k"]),
                str(row["samples"]),
                _rate(row["samples_per_s"]),
                _fmt(gain, ".2f") + "×",
                _fmt(row.get("cpu_us_per_message"), ".1f"),
            )
        console.print(table)
    if results.get("logging"):
        table = Table(title="log levels, xor 2-2-1 online", title_justify="left")
        for col in ("level", "samples/s", "vs off", "CPU µs/msg"):
            table.add_column(col, justify="right")
        base = results["logging"][0] if results["logging"][0]["status"] == "ok" else None
        for row in results["logging"]:
            if row["status"] != "ok":
                table.add_row(row["name"], FAILED)
                continue
            ratio = row["samples_per_s"] / base["samples_per_s"] if base else None
            table.add_row(
                row["name"].split()[-1],
                _rate(row["samples_per_s"]),
                _fmt(ratio, ".2f") + "×",
                _fmt(row.get("cpu_us_per_message"), ".1f"),
            )
        console.print(table)
    table = Table(title="start-up (XOR-shaped 2-(N-3)-1)", title_justify="left")
    for col in (
        "neurons",
        "launch->ready s",
        "wiring s",
        "USS/neuron MB (median)",
        "max",
        "tree PSS MB",
        "peak PSS MB",
    ):
        table.add_column(col, justify="right")
    for row in results.get("startup", []):
        if row["status"] != "ok":
            table.add_row(str(row.get("neurons", row["name"])), FAILED)
            continue
        table.add_row(
            str(row["neurons"]),
            _fmt(row["ready_s"], ".2f"),
            _fmt(row["wiring_s"], ".2f"),
            _fmt(row["uss_mb_median"], ".2f"),
            _fmt(row["uss_mb_max"], ".2f"),
            _fmt(row["tree_pss_mb"], ",.0f"),
            _fmt(row.get("peak_pss_mb"), ",.0f"),
        )
    console.print(table)
    pairs = results.get("cores", [])
    counts = pairs[0]["counts"] if pairs else [1]
    table = Table(title=f"cores (of this machine's {counts[-1]})", title_justify="left")
    table.add_column("task", justify="left")
    for n in counts:
        table.add_column(f"{n} core{'s' * (n > 1)} samples/s", justify="right")
    if len(counts) > 1:
        table.add_column(f"{counts[-1]} / 1", justify="right")
    for pair in pairs:
        rates = [pair[f"cores_{n}"] for n in counts]
        cells = [_rate(r.get("samples_per_s")) if r["status"] == "ok" else r["status"] for r in rates]
        speedup = [_fmt(pair.get(f"speedup_{counts[-1]}_over_1"), ".2f") + "×"] if len(counts) > 1 else []
        table.add_row(pair["task"], *cells, *speedup)
    console.print(table)
    failed = _failures(results)
    if failed:
        console.print(f"[red]{len(failed)} row(s) failed:[/] " + "; ".join(failed))
    if results.get("socket_files_left"):
        console.print(f"[red]socket files left behind:[/] {results['socket_files_left']}")


def _failures(results: dict) -> list[str]:
    transport = results.get("transport", {})
    rows = [
        *(transport[k] for k in ("ceiling", "latency") if k in transport),
        *transport.get("bare", []),
        *results.get("training", []),
        *results.get("pipelining", []),
        *results.get("startup", []),
        *(pair[f"cores_{n}"] for pair in results.get("cores", []) for n in pair["counts"]),
    ]
    failed = [f"{r.get('name')}: {r.get('error')}" for r in rows if r.get("status") == "failed"]
    return failed + [f"{r.get('name')}: socket files left behind" for r in rows if r.get("socket_files_left")]


def _console() -> Console:
    """Wide when it goes to a file or a pipe, so the tables are not wrapped."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console(highlight=False)
    return Console(highlight=False, width=170)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of sizes: {text!r}") from None
    if any(n < 4 for n in sizes):
        raise argparse.ArgumentTypeError(f"a start-up network has at least 4 neurons: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exmachina.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a look in under a minute")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--semeion", type=Path, default=SEMEION, help="semeion.data (default: %(default)s)")
    parser.add_argument(
        "--startup",
        type=_sizes,
        help="network sizes of the start-up rows, e.g. 100,1000,10000 on the 16-core machine "
        "(default: the profile's)",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.startup is not None:
        profile = replace(profile, startup_sizes=args.startup)
    signal.signal(signal.SIGTERM, _terminated)  # unwind, so that the row in progress stops its tree
    console = _console()
    results = run_bench(profile, args.out, args.semeion, say=lambda text: console.print(text, style="dim"))
    render(results, console)
    console.print(f"results: {args.out}")
    return 1 if _failures(results) or results["socket_files_left"] else 0
