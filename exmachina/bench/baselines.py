"""What the links alone can do: the ipc ceiling (two processes, one PUSH->PULL link), the round trip,
and bare networks of the training shapes. Each runs as `python -c` workers of `bench.ipc`, each alone
in its session so that it can be killed whole."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from exmachina.bench import ipc as bench_ipc
from exmachina.bench.tasks import messages_per_batch


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
