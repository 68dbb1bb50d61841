"""The serve rows (`python -m exmachina.bench --serve`): rows/s and latency of `exmachina serve` on the
digits model, against Model.predict in this process on the very same rows.

The model is 256-8-10 (the original job's shape) with the seed's initial weights, saved as model.npz in
a run directory made by the real code: serving speed does not depend on what the weights learnt. The
server runs through the real command line, in its own session, with its default batching; clients
are threads of this process, each with one request outstanding at a time, so "in flight" here is
requests in flight. Every answer is checked against Model.predict.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from exmachina.bench.tasks import semeion_config
from exmachina.bench.tree import STOP_GRACE_S, STOP_PER_PROCESS_S, Tree
from exmachina.config import config_from_dict
from exmachina.data import datasets
from exmachina.model import parameters
from exmachina.model.trained import Model, load
from exmachina.rundir.directory import RunDir

REQUEST_ROWS = (1, 16, 256)
IN_FLIGHT = (1, 4, 16, 64)
START_TIMEOUT_S = 300.0  # 275 processes on a busy two-core machine


def digits_run(workdir: Path, semeion: Path) -> tuple[RunDir, Model, np.ndarray]:
    """A run directory holding the 256-8-10 model, the model loaded back, and the digits' pixels."""
    raw = semeion_config(0, semeion)
    raw["data"].pop("limit")
    raw["runtime"]["runs_dir"] = str(workdir / "runs")
    config = config_from_dict(raw)
    run = RunDir.create(config)
    parameters.initial(config).save(run.model)
    return run, load(run.path), datasets.load(config).inputs


def _post(connection: http.client.HTTPConnection, rows: list) -> tuple[int, dict]:
    connection.request("POST", "/predict", json.dumps({"inputs": rows}))
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _clients(
    address: tuple[str, int], pixels: np.ndarray, size: int, in_flight: int, seconds: float, model: Model
) -> dict:
    """`in_flight` threads, each on its own keep-alive connection, posting requests of `size` rows for
    `seconds`; rows/s and latency."""
    latencies: list[float] = []
    wrong: list[str] = []
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        start = (k * 97) % (len(pixels) - size)
        connection = http.client.HTTPConnection(*address, timeout=120)
        try:
            while time.perf_counter() < stop_at:
                rows = pixels[start : start + size]
                began = time.perf_counter()
                try:
                    status, answer = _post(connection, rows.tolist())
                except (OSError, http.client.HTTPException) as exc:
                    status, answer = 0, {"error": repr(exc)}
                    connection.close()
                latencies.append(time.perf_counter() - began)
                if status != 200 or not np.allclose(
                    answer["outputs"], model.predict(rows), rtol=0, atol=1e-9
                ):
                    wrong.append(f"{status} {str(answer)[:80]}")
                start = (start + size) % (len(pixels) - size)
        finally:
            connection.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return _row(size, in_flight, latencies, elapsed, wrong)


def _row(size: int, in_flight: int, latencies: list[float], elapsed: float, wrong: list[str]) -> dict:
    ordered = sorted(latencies)
    return {
        "rows_per_request": size,
        "in_flight": in_flight,
        "requests": len(ordered),
        "rows_per_s": size * len(ordered) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "wrong": len(wrong),
        "first_wrong": wrong[0] if wrong else None,
    }


def predict_rows(model: Model, pixels: np.ndarray, size: int, seconds: float) -> dict:
    """Model.predict in this process, a request of `size` rows at a time."""
    latencies: list[float] = []
    start, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        t = time.perf_counter()
        model.predict(pixels[start : start + size])
        latencies.append(time.perf_counter() - t)
        start = (start + size) % (len(pixels) - size)
    return _row(size, 1, latencies, time.perf_counter() - began, [])


def _started(tree: Tree) -> tuple[str, int]:
    """The address the server printed, once it did."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(r"serving http://([^:/]+):(\d+)/", tree.output())
        if found:
            return found[1], int(found[2])
        if not tree.running():
            break
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start: {tree.output()[-400:]}")


def run_serve_bench(semeion: Path, seconds: float, say: Callable[[str], None]) -> dict:
    """Every serve row, then Model.predict's; whatever the server started is stopped and checked."""
    with tempfile.TemporaryDirectory(prefix="exm-serve-bench-") as home:
        workdir = Path(home)
        run, model, pixels = digits_run(workdir, semeion)
        sockets = Path(tempfile.mkdtemp(prefix="exm-", dir=workdir))
        env = {**os.environ, "EXMACHINA_SOCKET_DIR": str(sockets), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "exmachina", "serve", str(run.path), "--port", "0"]
        processes = sum(model.layer_sizes) + 3
        tree = Tree(command, workdir, env, None, STOP_GRACE_S + STOP_PER_PROCESS_S * processes)
        rows = []
        try:
            started = time.perf_counter()
            address = _started(tree)
            say(f"serving {processes - 3} neurons after {time.perf_counter() - started:.1f} s")
            for size in REQUEST_ROWS:
                for in_flight in IN_FLIGHT:
                    rows.append(_clients(address, pixels, size, in_flight, seconds, model))
                    say(
                        f"  {size} rows a request, {in_flight} in flight: {rows[-1]['rows_per_s']:.0f} rows/s"
                    )
        finally:
            leaked = tree.close()
        predicted = [predict_rows(model, pixels, size, seconds) for size in REQUEST_ROWS]
        left = [p for p in sockets.rglob("*") if p.is_socket()]
    return {
        "model": "256-8-10",
        "seconds_per_row": seconds,
        "served": rows,
        "predict": predicted,
        "leaked_processes": leaked,
        "socket_files_left": len(left),
    }


def render_serve(results: dict, console: Console) -> None:
    table = Table(title=f"exmachina serve, {results['model']}: rows/s and latency per request")
    for column in ("rows/request", "in flight", "requests", "rows/s", "p50 ms", "p99 ms", "wrong"):
        table.add_column(column, justify="right")
    for row in results["served"]:
        table.add_row(*_cells(row))
    for row in results["predict"]:
        table.add_row(*_cells(row, "Model.predict"))
    console.print(table)


def _cells(row: dict, in_flight: str | None = None) -> list[str]:
    return [
        str(row["rows_per_request"]),
        in_flight or str(row["in_flight"]),
        str(row["requests"]),
        f"{row['rows_per_s']:,.0f}",
        f"{row['p50_ms']:.2f}",
        f"{row['p99_ms']:.2f}",
        str(row["wrong"]),
    ]
