"""Looking inside a run, live or finished: `exmachina logs` and `exmachina inspect`.

`RunView` is a run directory opened for reading (its resolved config tells which neurons exist and
who is wired to whom); `ps.py` and `trace.py` build on it. Nothing here writes into a run.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from exmachina.config import Config, ConfigError, config_from_dict
from exmachina.model.parameters import Parameters, initial
from exmachina.model.topology import COORDINATOR, layer_ids
from exmachina.rundir.directory import RunDir, resolve
from exmachina.tools import logview

SUPERVISOR = "supervisor"
NEURON_TITLE = "exmachina: neuron "  # + id: the process title each neuron sets (ps -ef shows it)
COORDINATOR_TITLE = "exmachina: coordinator"
SUPERVISOR_TITLE = "exmachina: supervisor"


class InspectError(Exception):
    """Something the user asked for that is not there: one line, exit code 2."""


def console() -> Console:
    """Rich output; wide when it goes to a file or a pipe, so lines are not wrapped for grep."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console(highlight=False)
    return Console(highlight=False, width=160)


def alive(pid: int | None, title: str) -> bool:
    """Whether `pid` is a live process with this title (not merely a reused pid)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return " ".join(proc.cmdline()).strip() == title
    except psutil.Error:
        return False


def title_of(process_id: str) -> str:
    if process_id == COORDINATOR:
        return COORDINATOR_TITLE
    if process_id == SUPERVISOR:
        return SUPERVISOR_TITLE
    return NEURON_TITLE + process_id


@dataclass
class RunView:
    """A run directory opened for reading."""

    dir: RunDir
    config: Config
    layers: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (layer name, neuron ids)

    @classmethod
    def open(cls, run: str | Path | None) -> RunView:
        run_dir = resolve(run)
        if not run_dir.path.is_dir():
            if run is None:
                raise InspectError("no runs/latest here: name a run directory (or train one first)")
            raise InspectError(f"no run {str(run)!r}: neither a directory nor a name under runs/")
        try:
            raw = yaml.safe_load(run_dir.config.read_text())
            config = config_from_dict(raw, source=str(run_dir.config))
        except FileNotFoundError:
            raise InspectError(f"{run_dir.path}: not a run directory (no config.yaml)") from None
        except (ConfigError, yaml.YAMLError) as exc:
            raise InspectError(f"{run_dir.config}: unreadable: {exc}") from None
        layers = [(spec.name, layer_ids(config, i)) for i, spec in enumerate(config.network.layers)]
        return cls(run_dir, config, layers)

    @property
    def name(self) -> str:
        return self.dir.path.resolve().name

    @property
    def neuron_ids(self) -> list[str]:
        return [nid for _, ids in self.layers for nid in ids]

    def locate(self, nid: str) -> tuple[int, int]:
        """(layer, index) of a neuron id; InspectError naming the neurons there are."""
        for layer, (_, ids) in enumerate(self.layers):
            if nid in ids:
                return layer, ids.index(nid)
        raise InspectError(f"no neuron {nid!r} in {self.name}: it has {self.describe_layers()}")

    def describe_layers(self) -> str:
        return "; ".join(f"{name}: {_span(ids)}" for name, ids in self.layers)

    def process_ids(self) -> list[str]:
        """Every process that has (or will have) a log: neurons in layer order, then the others."""
        ids = [*self.neuron_ids, COORDINATOR, SUPERVISOR]
        known = set(ids)
        if self.dir.neurons.is_dir():
            extra = {p.name.removesuffix(".log") for p in self.dir.neurons.glob("*.log")} - known
            ids.extend(sorted(extra))
        return ids

    def select(self, neurons: Iterable[str] = (), layers: Iterable[str] = ()) -> list[str]:
        """The processes named (neuron ids, `coordinator`, `supervisor`) and every neuron of the layers
        named, in layer order; everything when nothing is named."""
        neurons, layers = list(neurons), list(layers)
        if not neurons and not layers:
            return self.process_ids()
        wanted: set[str] = set()
        by_name = dict(self.layers)
        for name in layers:
            if name not in by_name:
                known = ", ".join(by_name)
                raise InspectError(f"no layer {name!r} in {self.name}: its layers are {known}")
            wanted.update(by_name[name])
        everyone = self.process_ids()
        for nid in neurons:
            if nid not in everyone:
                self.locate(nid)  # raises, naming the neurons there are
            wanted.add(nid)
        return [pid for pid in everyone if pid in wanted]

    def source(self, process_id: str) -> logview.Source:
        return logview.Source(self.dir.log(process_id), process_id)

    def records(self, process_id: str, level: int = 0) -> Iterator[logview.Record]:
        source = self.source(process_id)
        try:
            yield from source.backlog(level)
        finally:
            source.close()

    def summary(self) -> dict[str, Any] | None:
        try:
            return self.dir.read_summary()
        except (OSError, json.JSONDecodeError):
            return None

    def stats(self) -> dict[str, Any] | None:
        """The coordinator's live `stats.json` (None before the first one, or if unreadable)."""
        try:
            return json.loads(self.dir.stats.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def finished(self) -> bool:
        return self.dir.summary.exists()

    def parameters(self) -> tuple[Parameters, str] | None:
        """The newest weights on disk: the live snapshot or the final model, whichever is newer."""
        files = [p for p in (self.dir.snapshot, self.dir.model) if p.exists()]
        for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                return Parameters.load(path), path.name
            except (OSError, ValueError, KeyError):
                continue
        return None


def _span(ids: tuple[str, ...] | list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{ids[0]} ... {ids[-1]} ({len(ids)})"


# -- exmachina logs ---------------------------------------------------------------------------------


def show_logs(
    run: str | None,
    neurons: Iterable[str] = (),
    layers: Iterable[str] = (),
    follow: bool = False,
    level: str | None = None,
    as_json: bool = False,
    out: IO[str] | None = None,
) -> int:
    """Print the chosen logs merged in time order; with `follow`, keep printing until the run ends."""
    out = out or sys.stdout
    view = RunView.open(run)
    ids = view.select(neurons, layers)
    threshold = logview.RANKS[level.upper()] if level else 0
    if (limit := logview.room_for(len(ids))) is not None:
        raise InspectError(
            f"{len(ids)} logs are more than the {limit} files this process may open (ulimit -Hn): "
            "name fewer with --neuron or --layer"
        )
    sources = [view.source(pid) for pid in ids]

    def emit(batch: Iterable[logview.Record]) -> None:
        for record in batch:
            out.write((record.as_json() if as_json else record.text) + "\n")
        out.flush()

    try:
        emit(logview.merge([s.backlog(threshold, whole=not follow) for s in sources]))
        if view.config.runtime.log_level == "off":
            print(f"exmachina: {view.name} runs with log_level off: it writes no logs", file=sys.stderr)
        if follow:
            if view.finished():
                emit(sorted((r for s in sources for r in s.poll(threshold)), key=lambda r: r.stamp))
            else:
                logview.follow(sources, emit, view.finished, threshold)
    finally:
        for source in sources:
            source.close()
    return 0


# -- exmachina inspect ------------------------------------------------------------------------------

_KV = re.compile(r"([\w|]+)=(\[[^\]]*\]|\S+)")
BLOCKS = "▁▂▃▄▅▆▇█"


def fields(message: str) -> dict[str, Any]:
    """`key=value` pairs of a log message; `[...]` values become lists of floats."""
    found: dict[str, Any] = {}
    for key, value in _KV.findall(message):
        if value.startswith("["):
            found[key] = [float(v) for v in value[1:-1].split() if v != "..."]
        else:
            try:
                found[key] = float(value)
            except ValueError:
                found[key] = value
    return found


def sparkline(values: list[float], width: int = 32) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return BLOCKS[3] * len(values)
    return "".join(BLOCKS[int((v - lo) / (hi - lo) * (len(BLOCKS) - 1) + 0.5)] for v in values)


def epoch_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@dataclass
class Story:
    """What a neuron's log says about it."""

    starts: list[dict] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    finals: list[dict] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)  # debug: one per update
    weights: list[list[float]] = field(default_factory=list)  # every axon seen, in time order
    biases: list[float] = field(default_factory=list)
    wired: str = ""
    warnings: int = 0
    last_warning: str = ""
    lines: int = 0
    first: str = ""
    last: str = ""

    @classmethod
    def read(cls, records: Iterable[logview.Record]) -> Story:
        story = cls()
        for r in records:
            story._count(r)
            word = r.message.partition(" ")[0]
            if word == "wired:":
                story.wired = r.message
            elif word in _TOLD:
                story._take(word, fields(r.message) | {"stamp": r.stamp})
        return story

    def _count(self, r: logview.Record) -> None:
        """Every record: how many, from when to when, and the warnings among them."""
        self.lines += 1
        self.first = self.first or r.stamp
        self.last = r.stamp or self.last
        if r.rank >= logview.RANKS["WARNING"]:
            self.warnings += 1
            self.last_warning = r.message

    def _take(self, word: str, f: dict[str, Any]) -> None:
        """A line that tells of the neuron's state: its weights and bias, and the line by kind."""
        axon = f.get("axon", f.get("weights"))
        if isinstance(axon, list):
            self.weights.append(axon)
        if isinstance(f.get("bias"), float):
            self.biases.append(f["bias"])
        if word == "start":
            self.starts.append(f)
        elif word == "stats":
            self.stats.append(f)
        elif word == "final":
            self.finals.append(f)
        elif isinstance(f.get("delta"), float):
            self.deltas.append(f["delta"])
        elif isinstance(f.get("delta"), list) and f["delta"]:  # a mini-batch: its first few deltas
            self.deltas.append(sum(abs(d) for d in f["delta"]) / len(f["delta"]))


_TOLD = ("start", "stats", "final", "update", "restarted:")  # the lines Story._take reads


def restarts(view: RunView, process_id: str) -> tuple[int | None, list[str]]:
    """How often the supervisor restarted a process, and how its abnormal exits ended. None when the
    supervisor's log does not say (log level warning or off)."""
    started = restarting = 0
    exits = []
    for r in view.records(SUPERVISOR):
        kind, _, rest = r.message.partition(" ")
        if rest.partition(" ")[0] != process_id:
            continue
        if kind == "started":
            started += 1
        elif kind == "restarting":
            restarting += 1
        elif kind == "exited":
            code = fields(rest).get("exitcode")
            if isinstance(code, float) and code != 0:
                exits.append(f"{r.stamp[11:23]} {_exit_reason(int(code))}")
    if not started and not restarting:
        return None, exits
    return max(started - 1, restarting), exits


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def inspect_neuron(run: str | None, nid: str) -> int:
    """Everything the run directory tells of one neuron: its place and synapses, its weights then
    and now, its activity and error, its messages, and its process."""
    view = RunView.open(run)
    if nid in (COORDINATOR, SUPERVISOR):
        raise InspectError(f"{nid} is not a neuron: see `exmachina logs {view.name} --neuron {nid}`")
    layer, index = view.locate(nid)
    story = Story.read(view.records(nid))
    stats_json = view.stats() or {}
    live_stats = (stats_json.get("neurons") or {}).get(nid)
    out = console()
    out.print(_heading(view, nid, layer, index, bool(stats_json)))
    _print_synapses(out, view, layer, story)
    _print_weights(out, view, layer, index, story)
    out.print()
    _print_activity(out, view.config, story)
    _print_messages(out, story, live_stats)
    _print_process(out, view, nid, story, live_stats)
    return 0


def _peers(view: RunView, layer: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(upstream, downstream) of a neuron of `layer`: the layers either side, or the coordinator."""
    upstream = (COORDINATOR,) if layer == 0 else view.layers[layer - 1][1]
    downstream = (COORDINATOR,) if layer == len(view.layers) - 1 else view.layers[layer + 1][1]
    return upstream, downstream


def _heading(view: RunView, nid: str, layer: int, index: int, has_stats: bool) -> str:
    c = view.config
    summary = view.summary()
    layer_name, ids = view.layers[layer]
    learns = "learns its bias" if c.learns_bias(layer) else "fixed bias"
    if summary is not None:
        state = f"{summary.get('status', '?')} after {summary.get('epochs', '?')} epochs"
    elif has_stats:
        state = "live"
    else:
        state = "starting, or ended without a summary"
    return (
        f"[bold]{escape(nid)}[/]  layer {layer} ({escape(layer_name)}), neuron {index + 1} of {len(ids)}, "
        f"{c.activation(layer)}, {learns}\n[dim]run {escape(view.name)} ({escape(state)})[/]"
    )


def _print_synapses(out: Console, view: RunView, layer: int, story: Story) -> None:
    last = len(view.layers) - 1
    upstream, downstream = _peers(view, layer)
    sensor = " (the sensor: the coordinator feeds it one input value)" if layer == 0 else ""
    target = " (the coordinator turns it into the loss and sends back dL/da)" if layer == last else ""
    out.print("\n[bold]Synapses[/]")
    out.print(f"  in   {len(upstream)} from {escape(_span(upstream))}{sensor}")
    out.print(f"  out  {len(downstream)} to {escape(_span(downstream))}{target}")
    if story.wired:
        out.print(f"  [dim]its log: {escape(story.wired)}[/]")


@dataclass
class _Weights:
    """A neuron's axon and bias: initial (the seed's draw) and now (snapshot or model, else its log)."""

    first_w: list[float]
    now_w: list[float]
    first_b: float
    now_b: float
    where: str  # where "now" comes from

    @classmethod
    def of(cls, view: RunView, layer: int, index: int, story: Story) -> _Weights:
        start = initial(view.config)
        loaded = view.parameters()
        if layer == len(view.layers) - 1:
            first_w, now_w = [1.0], [1.0]
        else:
            first_w = start.axons[layer][index].tolist()
            now_w = loaded[0].axons[layer][index].tolist() if loaded else (story.weights or [[]])[-1]
        first_b = float(start.biases[layer][index])
        now_b = float(loaded[0].biases[layer][index]) if loaded else (story.biases or [math.nan])[-1]
        where = f"{loaded[1]}, {_age(view.dir.path / loaded[1])}" if loaded else "its log"
        return cls(first_w, now_w, first_b, now_b, where)


def _print_weights(out: Console, view: RunView, layer: int, index: int, story: Story) -> None:
    """The weights table; history comes from the log's axon=[...] lines."""
    fixed = layer == len(view.layers) - 1
    downstream = _peers(view, layer)[1]
    w = _Weights.of(view, layer, index, story)
    title = f"Weights (now: {w.where}; history: {len(story.weights)} log lines)"
    table = Table(title=title, title_justify="left")
    for col in ("synapse", "initial", "now", "change", "history"):
        table.add_column(col, justify="right" if col in ("initial", "now", "change") else "left")
    shown = 32
    for j, peer in enumerate(downstream[:shown]):
        history = [axon[j] for axon in story.weights if j < len(axon)]
        table.add_row(
            f"-> {peer}",
            _num(w.first_w[j] if j < len(w.first_w) else math.nan),
            _num(w.now_w[j] if j < len(w.now_w) else math.nan),
            "fixed at 1" if fixed else _num(_change(w.first_w, w.now_w, j), sign=True),
            "" if fixed else sparkline(history),
        )
    if len(downstream) > shown:
        table.add_row(f"... {len(downstream) - shown} more", "", "", "", "")
    bias_change = _num(w.now_b - w.first_b, sign=True) if view.config.learns_bias(layer) else "fixed"
    table.add_row("bias", _num(w.first_b), _num(w.now_b), bias_change, sparkline(story.biases))
    out.print()
    out.print(table)
    if len(downstream) > 8 and not fixed:
        out.print("  [dim](the log carries the first 8 weights of an axon: history for those only)[/]")


def _print_activity(out: Console, c: Config, story: Story) -> None:
    """From its stats lines if it has any, else from the debug log's update lines."""
    if story.stats:
        every = c.runtime.stats_interval
        act = Table(
            title=f"Activity and error ({len(story.stats)} stats reports, one per {every:g} s of work)",
            title_justify="left",
        )
        for col in ("mean per report", "first", "last", "min", "max", "history"):
            act.add_column(col, justify="left" if col in ("mean per report", "history") else "right")
        for label, key in (("activity", "activity_mean"), ("|error| (delta)", "|error|_mean")):
            values = [s[key] for s in story.stats if isinstance(s.get(key), float)]
            if values:
                act.add_row(
                    label,
                    _num(values[0]),
                    _num(values[-1]),
                    _num(min(values)),
                    _num(max(values)),
                    sparkline(values),
                )
        out.print(act)
    elif story.deltas:
        d = [abs(x) for x in story.deltas]
        out.print(
            f"[bold]Error[/] (debug log, {len(d)} updates): |delta| first {_num(d[0])}, last {_num(d[-1])}, "
            f"max {_num(max(d))}  {sparkline(d)}"
        )
    else:
        out.print("[bold]Activity and error[/]: no stats line in its log yet (one per stats_interval)")


def _counts(story: Story, live_stats: dict | None) -> tuple[dict, str]:
    """Its message counts and where they come from: stats.json when newer than its final log line,
    else that line, else its last stats line."""
    counts = dict(story.finals[-1]) if story.finals else {}
    counted_at = epoch_seconds(counts["stamp"]) if counts else 0.0
    if live_stats and live_stats.get("time", 0) > counted_at:
        return dict(live_stats), "stats.json"
    if counts:
        return counts, "its final log line"
    if story.stats:
        return dict(story.stats[-1]), "its last stats line"
    return {}, ""


def _print_messages(out: Console, story: Story, live_stats: dict | None) -> None:
    """Messages, updates and problems."""
    counts, source = _counts(story, live_stats)
    out.print("\n[bold]Messages[/]" + (f" [dim](since its last start; from {source})[/]" if source else ""))
    if counts:
        parts = [f"{k} {int(counts[k])}" for k in ("received", "sent", "dropped") if k in counts]
        if "pending" in counts:
            parts.append(f"pending {int(counts['pending'])}")
        if "updates" in counts:
            parts.append(f"updates {int(counts['updates'])}")
        out.print("  " + ", ".join(parts))
    else:
        out.print("  none counted yet")
    problem = (live_stats or {}).get("last_problem") or story.last_warning
    out.print(f"  warnings in its log: {story.warnings}" + (f"; last: {escape(problem)}" if problem else ""))


def _print_process(out: Console, view: RunView, nid: str, story: Story, live_stats: dict | None) -> None:
    count, exits = restarts(view, nid)
    pid = int(story.starts[-1]["pid"]) if story.starts else (live_stats or {}).get("pid")
    now_alive = alive(pid, title_of(nid))
    out.print("\n[bold]Process[/]")
    state = "running" if now_alive else "not running"
    times = {1: "once", 2: "twice"}.get(len(story.starts), f"{len(story.starts)} times")
    out.print(f"  pid {pid or '?'} ({state}), started {times}")
    if count is None:
        out.print("  restarts: unknown (the supervisor's log is below level info)")
    else:
        out.print(f"  restarts: {count}" + (f" (abnormal exits: {', '.join(exits)})" if exits else ""))
    if story.lines:
        out.print(f"  [dim]{story.lines} log records from {story.first} to {story.last}[/]")


def _num(value: float, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _change(first: list[float], now: list[float], j: int) -> float:
    return now[j] - first[j] if j < len(first) and j < len(now) else math.nan


def _age(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime).strftime("%H:%M:%S")
    except OSError:
        return "?"
