"""The whole bench: its rows one after another, each recorded whether it worked or not, then
results.json."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from exmachina.bench.accuracy import network_to_accuracy, reference_to_accuracy, shipped
from exmachina.bench.baselines import bare_network, ipc_latency, transport_ceiling
from exmachina.bench.machine import machine_info
from exmachina.bench.profiles import MODES, PIPELINED_TRAINING, SEMEION, SEMEION_ROWS, Profile
from exmachina.bench.runs import startup_probe, train_network
from exmachina.bench.tasks import reference_holdout, reference_rate, semeion_config, xor_config

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
            bare.append(self.row("bare " + "-".join(map(str, sizes)), functools.partial(measure, sizes)))
        return {"ceiling": ceiling, "latency": latency, "bare": bare}

    def training(self, semeion: Path, ceiling: float | None, bare: Sequence[dict] = ()) -> list[dict]:
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
            samples = max(p.pipelined_samples, 10 * k)  # enough groups of K for the CPU window
            config = semeion_config(samples, semeion, 1, k)
            row = self.network(f"256-8-10 K={k}", config, 90 + samples / 2, reference=False)
            sweep.append({**row, "k": k})
        return sweep

    def pipelined_accuracy(self, semeion: Path) -> dict:
        """Held-out accuracy (20% of the rows) after `accuracy_epochs` epochs: online from the
        reference, which the exact online network equals, and K in flight from the process network."""
        p = self.profile
        online = semeion_config(None, semeion, 1, 1, p.accuracy_epochs, holdout=0.2)
        config = semeion_config(None, semeion, 1, p.accuracy_k, p.accuracy_epochs, holdout=0.2)
        config["training"].update(PIPELINED_TRAINING)
        name = f"256-8-10 K={p.accuracy_k}, {p.accuracy_epochs} epochs"
        row = self.network(name, config, 300 + 60 * p.accuracy_epochs, reference=False)
        return {
            "epochs": p.accuracy_epochs,
            "k": p.accuracy_k,
            "online_reference": reference_holdout(online),
            "pipelined_reference": reference_holdout(config),
            "pipelined": row,
        }

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

    def accuracy(self, semeion: Path) -> list[dict]:
        """Each shipped config of the profile to held-out accuracy: the process network, then the
        reference on the same split."""
        rows = []
        for name in self.profile.accuracy_configs:
            task = name.removesuffix(".yaml")

            def network(name: str = name) -> dict:
                workdir = self.workdir / f"accuracy{self.count}"
                timeout = self.profile.accuracy_timeout_s
                return network_to_accuracy(shipped(name, semeion), workdir, self.sockets, timeout)

            for engine, measure in (
                ("network", network),
                ("reference", lambda name=name: reference_to_accuracy(shipped(name, semeion))),
            ):
                row = self.row(f"{task} to accuracy, {engine}", measure)
                rows.append({**row, "config": name, "engine": engine})
        return rows

    def startup(self) -> list[dict]:
        return [
            self.row(
                f"start-up {n}",
                functools.partial(
                    startup_probe, n, self.workdir / f"startup{n}", self.sockets, timeout=60 + n * 0.15
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
    return [*counts, usable] if usable > 1 else counts


SECTIONS = ("transport", "training", "pipelining", "logging", "accuracy", "startup", "cores")


def run_bench(
    profile: Profile,
    out: Path,
    semeion: Path = SEMEION,
    say: Callable[[str], None] = print,
    only: tuple[str, ...] = SECTIONS,
) -> dict:
    """Every row of `profile` in the sections `only` names, then results.json at `out`; returns the
    results."""
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
        _sections(bench, results, semeion, only)
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


def _sections(bench: Bench, results: dict, semeion: Path, only: tuple[str, ...]) -> None:
    """The sections `only` names, in order, into `results`."""
    profile, say = bench.profile, bench.say
    if "transport" in only:
        say("transport")
        results["transport"] = bench.transport()
    if "training" in only:
        say("training")
        transport = results.get("transport", {})
        ceiling = transport.get("ceiling", {}).get("messages_per_s")
        results["training"] = bench.training(semeion, ceiling, transport.get("bare", []))
    if "pipelining" in only and profile.k_sweep and profile.semeion_samples:
        say("pipelining")
        results["pipelining"] = bench.pipelining(semeion)
        if profile.accuracy_epochs:
            results["pipelined_accuracy"] = bench.pipelined_accuracy(semeion)
    if "logging" in only and profile.log_samples:
        say("log levels")
        results["logging"] = bench.logging()
    if "accuracy" in only and profile.accuracy_configs:
        say("time to accuracy")
        results["accuracy"] = bench.accuracy(semeion)
    if "startup" in only:
        say("start-up")
        results["startup"] = bench.startup()
    if "cores" in only:
        say("cores")
        results["cores"] = bench.cores(semeion)
