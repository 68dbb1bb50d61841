"""`exmachina ps`: every process of a live run, like `ps` but knowing what each neuron is doing.

Each neuron reports its counters to the coordinator once per `stats_interval`, and the coordinator
keeps the latest report of each in `stats.json` (with the neuron's own pid). Two readings about one
interval apart give messages per second; psutil gives CPU and memory of the pid the neuron reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from exmachina.model.topology import COORDINATOR
from exmachina.tools.inspection import (
    COORDINATOR_TITLE,
    SUPERVISOR,
    SUPERVISOR_TITLE,
    InspectError,
    RunView,
    alive,
    console,
    title_of,
)

EXIT_NOTHING_LIVE = 1


@dataclass
class Meter:
    """psutil handles kept between readings, so CPU % covers the time between them."""

    procs: dict[int, psutil.Process] = field(default_factory=dict)

    def prime(self, pids: list[int]) -> None:
        for pid in pids:
            if pid not in self.procs:
                try:
                    proc = psutil.Process(pid)
                    proc.cpu_percent(None)
                    self.procs[pid] = proc
                except psutil.Error:
                    continue

    def read(self, pid: int | None) -> tuple[str, str]:
        """(CPU %, RSS MB) of a pid, as text."""
        proc = self.procs.get(pid or 0)
        if proc is None:
            return "-", "-"
        try:
            with proc.oneshot():
                return f"{proc.cpu_percent(None):.0f}", f"{proc.memory_info().rss / 2**20:.1f}"
        except psutil.Error:
            return "-", "-"


def wait_for_stats(view: RunView, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        stats = view.stats()
        if stats is not None or view.finished() or time.monotonic() >= deadline:
            return stats
        time.sleep(0.1)


def next_reading(view: RunView, first: dict[str, Any], interval: float) -> dict[str, Any]:
    """A later stats.json in which every neuron has reported again (or the latest within two
    intervals: a neuron that has not reported by then is shown as such)."""
    started = time.monotonic()
    deadline = started + 2 * interval + 0.5
    before = {nid: entry.get("time") for nid, entry in (first.get("neurons") or {}).items()}
    latest = first
    while time.monotonic() < deadline:
        time.sleep(min(0.1, interval / 4))
        stats = view.stats()
        if stats is None:
            continue
        latest = stats
        now = latest.get("neurons") or {}
        fresh = all(now.get(nid, {}).get("time") != t for nid, t in before.items())
        if fresh and time.monotonic() - started >= min(0.25, interval):
            break
    return latest


def _rate(old: dict | None, new: dict | None, key: str) -> str:
    if not old or not new or old.get("pid") != new.get("pid"):
        return "-"
    dt = (new.get("time") or 0) - (old.get("time") or 0)
    if dt <= 0 or key not in new or key not in old:
        return "-"
    return f"{(new[key] - old[key]) / dt:.0f}"


COLUMNS = (  # (name, right-aligned)
    ("process", False),
    ("layer", False),
    ("pid", True),
    ("CPU %", True),
    ("RSS MB", True),
    ("in/s", True),
    ("out/s", True),
    ("pending", True),
    ("updates", True),
    ("dropped", True),
    ("problem", False),
)


def table(view: RunView, old: dict[str, Any], new: dict[str, Any], meter: Meter) -> tuple[Table, int]:
    """The process table, and how many of the run's processes are alive."""
    interval = view.config.runtime.stats_interval
    neurons_old, neurons_new = old.get("neurons") or {}, new.get("neurons") or {}
    t = Table(title_justify="left")
    for col, right in COLUMNS:
        t.add_column(col, justify="right" if right else "left", no_wrap=col != "problem")
    # a neuron whose report did not change between two readings has not reported for this long
    silent = f"no report in {2 * interval + 0.5:g} s" if old is not new else None
    live = 0
    for layer_name, ids in view.layers:
        for nid in ids:
            cells, up = _neuron_row(
                nid, layer_name, neurons_old.get(nid), neurons_new.get(nid), silent, meter
            )
            t.add_row(*cells)
            live += up
    coord, coord_old = new.get("coordinator") or {}, old.get("coordinator") or {}
    done_key = "updates"
    live += _add_run_rows(t, coord, done_key, meter)
    restarts = coord.get("restarts")
    t.title = (
        f"{view.name}: {coord.get('samples', '?')} samples in {coord.get('updates', '?')} batches, "
        f"{_rate(coord_old, coord, 'samples')} samples/s"
        + (f", {restarts} restarts" if restarts else "")
        + f"  [dim](rates over the last {interval:g} s stats interval)[/]"
    )
    return t, live


def _neuron_row(
    nid: str, layer_name: str, old: dict | None, entry: dict | None, silent: str | None, meter: Meter
) -> tuple[list[str], bool]:
    """A neuron's cells from its two reports, and whether its process is alive."""
    if entry is None:
        return [nid, layer_name, "-", "", "", "", "", "", "", "", "[dim]no report yet[/]"], False
    pid = entry.get("pid")
    up = alive(pid, title_of(nid))
    cpu, rss = meter.read(pid) if up else ("-", "-")
    problem = escape(str(entry.get("last_problem") or ""))
    if silent and entry.get("time") == (old or {}).get("time"):
        problem = f"[yellow]{silent}[/] " + problem
    cells = [
        nid,
        layer_name,
        str(pid) if up else f"[red]{pid} gone[/]",
        cpu,
        rss,
        _rate(old, entry, "received"),
        _rate(old, entry, "sent"),
        str(entry.get("pending", "-")),
        str(entry.get("updates", "-")),
        str(entry.get("dropped", "-")),
        problem,
    ]
    return cells, up


def _add_run_rows(t: Table, coord: dict[str, Any], done_key: str, meter: Meter) -> int:
    """The coordinator's row, and the supervisor's if it is alive; how many of the two are."""
    pid = coord.get("pid")
    up = alive(pid, COORDINATOR_TITLE)
    cpu, rss = meter.read(pid) if up else ("-", "-")
    t.add_row(
        COORDINATOR,
        "",
        str(pid) if up else f"[red]{pid} gone[/]",
        cpu,
        rss,
        "",
        "",
        "",
        f"{coord.get(done_key, '-')}",
        str(coord.get("dropped", "-")),
        "",
    )
    sup = supervisor_pid(pid)
    if sup is None:
        return up
    cpu, rss = meter.read(sup)
    t.add_row(SUPERVISOR, "", str(sup), cpu, rss, "", "", "", "", "", "")
    return up + 1


def supervisor_pid(coordinator_pid: int | None) -> int | None:
    """The run's supervisor: the nearest ancestor of the coordinator titled so (children may be forked
    by a helper process of the supervisor, so it need not be the parent)."""
    try:
        ancestors = psutil.Process(coordinator_pid).parents()[:3] if coordinator_pid else []
    except psutil.Error:
        return None
    return next((p.pid for p in ancestors if alive(p.pid, SUPERVISOR_TITLE)), None)


def live_pids(view: RunView, stats: dict[str, Any]) -> list[int]:
    pids = [
        entry.get("pid")
        for nid, entry in (stats.get("neurons") or {}).items()
        if alive(entry.get("pid"), title_of(nid))
    ]
    coord = (stats.get("coordinator") or {}).get("pid")
    if alive(coord, COORDINATOR_TITLE):
        pids.append(coord)
        sup = supervisor_pid(coord)
        if sup:
            pids.append(sup)
    return pids


def not_live(view: RunView, stats: dict[str, Any] | None) -> str:
    summary = view.summary()
    if summary is not None:
        return (
            f"{view.name} has finished ({summary.get('status', '?')} after {summary.get('epochs', '?')} "
            f"epochs): no live processes (its story: exmachina inspect, exmachina logs)"
        )
    if stats is None:
        return f"{view.name}: no stats.json yet and no summary: starting, or it never got going"
    return f"{view.name}: no live processes and no summary.json: it was killed, or its processes crashed"


def show_processes(run: str | None, watch: bool = False) -> int:
    view = RunView.open(run)
    interval = view.config.runtime.stats_interval
    out = console()
    first = wait_for_stats(view, 2 * interval + 1)
    if first is None or not live_pids(view, first):
        out.print(not_live(view, first))
        return EXIT_NOTHING_LIVE
    meter = Meter()
    meter.prime(live_pids(view, first))
    second = next_reading(view, first, interval)
    shown, _ = table(view, first, second, meter)
    if not watch:
        out.print(shown)
        return 0
    with Live(shown, console=out, auto_refresh=False) as screen:
        while True:
            first = second
            meter.prime(live_pids(view, first))
            second = next_reading(view, first, interval)
            shown, live = table(view, first, second, meter)
            screen.update(shown, refresh=True)
            if not live:
                break
    out.print()
    out.print(not_live(view, second))
    return 0


def kill_neuron(run: str | None, neuron: str, signal_name: str = "KILL") -> int:
    """`exmachina kill [RUN] --neuron ID`: signal one neuron process of that run only. Its pid is
    found among the descendants of that run's own supervisor (the ancestor of the coordinator named in
    the run's stats.json), never by a title alone, which a neuron of another run on the machine shares."""
    import signal as signals

    view = RunView.open(run)
    try:
        signum = signals.Signals[f"SIG{signal_name.upper().removeprefix('SIG')}"]
    except KeyError:
        raise InspectError(f"no signal {signal_name!r} (e.g. KILL, TERM, STOP, CONT)") from None
    if neuron not in {nid for _, ids in view.layers for nid in ids}:
        raise InspectError(f"{view.name}: no neuron {neuron!r} (ids are layer.index, e.g. hidden1.0)")
    coordinator = ((view.stats() or {}).get("coordinator") or {}).get("pid")
    sup = supervisor_pid(coordinator) if alive(coordinator, COORDINATOR_TITLE) else None
    if sup is None:
        raise InspectError(f"{view.name}: not live (no coordinator and supervisor of this run running)")
    pid = next((p.pid for p in _descendants(sup) if alive(p.pid, title_of(neuron))), None)
    if pid is None:
        raise InspectError(f"{view.name}: neuron {neuron} has no live process (restarting?)")
    psutil.Process(pid).send_signal(signum)
    print(f"exmachina: sent {signum.name} to neuron {neuron} (pid {pid}) of {view.name}")
    return 0


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
