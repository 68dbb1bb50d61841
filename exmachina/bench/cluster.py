"""`python -m exmachina.bench --ray`: the same networks placed on a two-node Ray cluster against the
local supervisor, in one run: time to ready, unique memory per neuron, samples/s.

The cluster is `ray.cluster_utils.Cluster` on this machine (a head labelled `head`, a second node
labelled `second`), so the figures are what host agents cost, not what a network between hosts costs.
The local rows run over tcp with CURVE, as the Ray rows must.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from exmachina.bench.runs import NEURON_TITLE, RowFailed, _await_ready, _finished_run, _supervised
from exmachina.bench.tasks import semeion_config, xor_config

LOCAL_TCP_MAX = 1000  # neurons
SETTLE_S = 1.0  # after ready, before the memory is read: the neurons have taken their first samples


def networks(semeion: Path, large: bool) -> list[tuple[str, dict, dict[str, str]]]:
    """(name, config, layer -> node label) of each network measured."""
    found = [
        (
            "2-100-1",
            xor_config(400, hidden=100, log_level="info"),
            {"input": "head", "hidden": "second", "output": "head"},
        ),
        (
            "256-8-10 digits",
            {**semeion_config(120, semeion), "runtime": {"log_level": "info"}},
            {"input": "head", "hidden": "second", "output": "second"},
        ),
    ]
    if large:
        found.append(
            (
                "2-1997-1",
                xor_config(40, hidden=1997, log_level="info"),
                {"input": "head", "hidden": "second", "output": "head"},
            )
        )
    return found


def measure(config: dict, workdir: Path, timeout: float) -> dict[str, Any]:
    """Launch to ready (the coordinator's "wired and ready" line), USS per neuron once ready, and
    the run's samples/s (summary.json) once it completed."""
    with _supervised(config, workdir, workdir / "sockets") as (tree, runs):
        match = _await_ready(tree, runs / "latest" / "neurons" / "coordinator.log", timeout)
        ready_at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        time.sleep(SETTLE_S)
        uss = _neuron_uss()
        deadline = time.monotonic() + timeout
        while tree.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if tree.running():
            raise RowFailed(f"not done after {timeout:g} s")
        summary, _ = _finished_run(tree, runs / "latest")
    if not uss:
        raise RowFailed("no neuron process found to measure")
    return {
        "status": "ok",
        "ready_s": ready_at - tree.launched_at,
        "uss_mb_median": statistics.median(uss) / 2**20,
        "neurons_measured": len(uss),
        "samples_per_s": summary["samples_per_s"],
        "peak_pss_mb": summary.get("peak_pss_mb"),
    }


def _neuron_uss() -> list[int]:
    """USS of every neuron process on this machine: under a Ray node they are not the driver's
    descendants, so they are found by their titles (the bench runs one network at a time)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if " ".join(proc.info["cmdline"] or []).startswith(NEURON_TITLE):
                found.append(proc.memory_full_info().uss)
    return found


def run_cluster_bench(semeion: Path, workdir: Path, large: bool, say: Callable[[str], None]) -> dict:
    """Every network locally, then on the cluster; the cluster is started here and shut down after."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    session = cluster.head_node.get_session_dir_path()  # type: ignore[attr-defined]
    rows = []
    try:
        cluster.add_node(num_cpus=1, resources={"second": 1})
        for name, config, layers in networks(semeion, large):
            neurons = sum(layer["size"] for layer in config["network"]["layers"])
            timeout = 120.0 + 0.5 * neurons
            base = {**config, "runtime": {**config["runtime"], "transport": "tcp"}}
            placed = {
                **base,
                "placement": {
                    "engine": "ray",
                    "address": cluster.address,
                    "rule": "by_layer",
                    "layers": layers,
                },
            }
            # a local run waits 60 s for every hello: past a thousand neurons on few cores, tcp with
            # CURVE handshakes takes longer, so the local row of the large network is the default ipc
            local = ("local ipc", config) if neurons > LOCAL_TCP_MAX else ("local", base)
            for where, cfg in (local, ("ray", placed)):
                say(f"{name} {where} ...")
                row: dict[str, Any] = {"network": name, "neurons": neurons, "placement": where}
                try:
                    row |= measure(cfg, workdir / f"{name.split()[0]}-{where.replace(' ', '-')}", timeout)
                except RowFailed as exc:
                    row |= {"status": "failed", "error": str(exc)}
                rows.append(row)
    finally:
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)
        latest = Path(session).parent / "session_latest"
        if latest.is_symlink() and not latest.exists():  # it pointed at the session just removed
            latest.unlink()
    return {"cluster": rows}


def render_cluster(results: dict, console: Console) -> None:
    table = Table(title="host agents on a two-node Ray cluster (this machine) against the local supervisor")
    for column in (
        "network",
        "neurons",
        "placement",
        "ready s",
        "vs local",
        "USS MB/neuron",
        "vs local",
        "samples/s",
        "vs local",
    ):
        table.add_column(column, justify="left" if column in ("network", "placement") else "right")
    local: dict[str, dict] = {}
    for row in results["cluster"]:
        if row["status"] != "ok":
            table.add_row(
                row["network"], str(row["neurons"]), row["placement"], f"failed: {row['error'][:60]}"
            )
            continue
        if row["placement"].startswith("local"):
            local[row["network"]] = row
        ref = local.get(row["network"])

        def ratio(key: str, ref: dict | None = ref, row: dict = row) -> str:
            return f"{row[key] / ref[key]:.2f}x" if ref and ref[key] else ""

        table.add_row(
            row["network"],
            f"{row['neurons']:,}",
            row["placement"],
            f"{row['ready_s']:.1f}",
            ratio("ready_s"),
            f"{row['uss_mb_median']:.2f}",
            ratio("uss_mb_median"),
            f"{row['samples_per_s']:,.1f}",
            ratio("samples_per_s"),
        )
    console.print(table)
