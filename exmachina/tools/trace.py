"""`exmachina trace RUN --sample N`: one sample's way through the network, hop by hop.

At log level debug every neuron logs each message it receives (`recv FORWARD sample=17 sender=3
value=...`, `wire.describe`) and each it sends (`send FORWARD sample=17 to=hidden1.2 value=...`), and
each update (`update sample=17 delta=...`). The stamps are microseconds of one machine's clock, so
the lines of all the neurons put together give the sample's path: when each neuron got its first and
its last input, when it fired, when its error left, and how long every synapse took to carry a
message (a neuron's `recv` minus its sender's `send` to it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from exmachina.model.topology import COORDINATOR
from exmachina.tools.inspection import InspectError, RunView, console

# a value is one number online, `[0.25 0.5 ...](32)` for a mini-batch (wire.show)
_VALUE = r"(\[[^\]]*\](?:\(\d+\))?|\S+)"
_HOP = re.compile(r"(recv|send) (FORWARD|INFER|BACKWARD) sample=(\d+) (sender|to)=(\S+) value=" + _VALUE)
_UPDATE = re.compile(r"update sample=(\d+) delta=" + _VALUE)


@dataclass
class Hop:
    time: datetime
    peer: str  # the neuron (or coordinator) at the other end of the synapse
    value: str  # as logged


@dataclass
class Seen:
    """What one neuron logged about the sample."""

    received: list[Hop] = field(default_factory=list)  # FORWARD or INFER in
    sent: list[Hop] = field(default_factory=list)
    errors_in: list[Hop] = field(default_factory=list)
    errors_out: list[Hop] = field(default_factory=list)
    updated: datetime | None = None
    delta: str | None = None


def collect(view: RunView, sample: int) -> tuple[dict[str, Seen], str | None]:
    """Every neuron's events for the sample, and its kind (FORWARD for training, INFER, or None)."""
    needle = f" sample={sample} ".encode()
    layers = [ids for _, ids in view.layers]
    last = len(layers) - 1
    seen: dict[str, Seen] = {}
    kind = None
    for layer, ids in enumerate(layers):
        for nid in ids:
            s = seen[nid] = Seen()
            for record in view.source(nid).grep(needle):
                hop = _HOP.match(record.message)
                if hop is None:
                    update = _UPDATE.match(record.message)
                    if update is not None and int(update[1]) == sample:
                        s.updated, s.delta = record.time, update[2]
                    continue
                direction, what, number, _, peer, value = hop.groups()
                if int(number) != sample:
                    continue
                backward = what == "BACKWARD"
                if not backward:
                    kind = what
                if direction == "recv":
                    index = int(peer)
                    if backward:
                        peer = COORDINATOR if layer == last else _at(layers[layer + 1], index)
                    else:
                        peer = COORDINATOR if layer == 0 else _at(layers[layer - 1], index)
                events = {
                    ("recv", False): s.received,
                    ("send", False): s.sent,
                    ("recv", True): s.errors_in,
                    ("send", True): s.errors_out,
                }[direction, backward]
                events.append(Hop(record.time, peer, value))
    return seen, kind


def _delta(text: str | None) -> str:
    if text is None:
        return "-"
    try:
        return f"{float(text):+.4g}"
    except ValueError:
        return text  # a mini-batch's deltas, as the neuron logged them


def _at(ids: tuple[str, ...], index: int) -> str:
    return ids[index] if 0 <= index < len(ids) else f"?{index}"


def samples_held(view: RunView) -> str:
    """Which samples the first input neuron's logs still hold, for a helpful 'not found'."""
    first = view.layers[0][1][0]
    numbers = [int(m[3]) for r in view.source(first).grep(b"recv ") if (m := _HOP.match(r.message))]
    if not numbers:
        return f"{first}'s log holds no sample"
    return f"{first}'s log holds samples {min(numbers)} to {max(numbers)}"


def show_trace(run: str | None, sample: int) -> int:
    """Print one sample's way through the network: every neuron's forward and (in training) backward
    events, in ms after the sample's first event, with the slowest synapse hop of each."""
    view = RunView.open(run)
    level = view.config.runtime.log_level
    if level != "debug":
        raise InspectError(
            f"{view.name} was logged at level {level}: trace needs the per-message lines of level debug "
            "(train with runtime: {log_level: debug})"
        )
    if sample < 1:
        raise InspectError(f"--sample {sample}: samples are numbered from 1")
    seen, kind = collect(view, sample)
    if not any(s.received or s.errors_in for s in seen.values()):
        raise InspectError(f"sample {sample} is not in the logs of {view.name}: {samples_held(view)}")
    clock = _Clock(seen)
    out = console()
    training = kind == "FORWARD"
    what = "training sample: forward, then backward" if training else "evaluation sample: forward only"
    out.print(
        f"[bold]sample {sample}[/] of {escape(view.name)} ({what})\n"
        f"times: ms after its first event ({clock.t0.strftime('%H:%M:%S.%f')}); "
        "hop: ms from the sender's send to the receiver's recv"
    )
    out.print(_forward_table(view, seen, clock))
    outputs = view.layers[-1][1]
    forward_done = max((seen[n].sent[0].time for n in outputs if seen[n].sent), default=None)
    if training:
        _print_backward(out, view, seen, clock, forward_done)
    else:
        out.print(f"the last output fired at {clock.at(forward_done)} ms: the coordinator reads the outputs")
    _notes(out, seen, clock)
    return 0


class _Clock:
    """The sample's events on one clock: times in ms after its first event, and each hop's lag from
    its sender's send, the slowest hops and the negative ones noted on the way."""

    def __init__(self, seen: dict[str, Seen]) -> None:
        self.t0 = min(
            h.time
            for s in seen.values()
            for hops in (s.received, s.sent, s.errors_in, s.errors_out)
            for h in hops
        )
        self.send_time = {  # (sender, receiver, backward) -> when it sent
            (nid, h.peer, backward): h.time
            for nid, s in seen.items()
            for backward, hops in ((False, s.sent), (True, s.errors_out))
            for h in hops
        }
        self.worst: list[tuple[float, str]] = []
        self.negative: list[str] = []

    def at(self, t: datetime | None) -> str:
        return "-" if t is None else f"{(t - self.t0).total_seconds() * 1000:+.3f}"

    def slowest(self, nid: str, hops: list[Hop], backward: bool) -> tuple[float, str] | None:
        """(lag in ms, sender) of the slowest of these hops into `nid`, if any sender's send is known."""
        lags = [
            ((h.time - self.send_time[h.peer, nid, backward]).total_seconds() * 1000, h.peer)
            for h in hops
            if (h.peer, nid, backward) in self.send_time
        ]
        if any(lag < 0 for lag, _ in lags):
            self.negative.append(nid)
        if not lags:
            return None
        hop = max(lags)
        self.worst.append((hop[0], f"{hop[1]} -> {nid} ({'backward' if backward else 'forward'})"))
        return hop


def _forward_table(view: RunView, seen: dict[str, Seen], clock: _Clock) -> Table:
    fwd = Table(title="Forward: activities flow input -> output", title_justify="left")
    for col in ("layer", "neuron", "inputs", "first in", "last in", "fired", "slowest hop"):
        fwd.add_column(
            col, justify="left" if col in ("layer", "neuron", "slowest hop") else "right", no_wrap=True
        )
    for layer, (name, ids) in enumerate(view.layers):
        expected = 1 if layer == 0 else len(view.layers[layer - 1][1])
        for nid in ids:
            s = seen[nid]
            times = [h.time for h in s.received]
            hop = clock.slowest(nid, s.received, False)
            fwd.add_row(
                name,
                nid,
                f"{len(s.received)}/{expected}",
                clock.at(min(times, default=None)),
                clock.at(max(times, default=None)),
                clock.at(s.sent[0].time if s.sent else None),
                f"{hop[0]:.3f} {hop[1]}" if hop else (COORDINATOR if layer == 0 else "-"),
            )
    return fwd


def _print_backward(
    out: Console, view: RunView, seen: dict[str, Seen], clock: _Clock, forward_done: datetime | None
) -> None:
    """The coordinator's turnaround, the errors' way back, and when the sample was complete."""
    outputs, inputs = view.layers[-1][1], view.layers[0][1]
    back_start = min((h.time for n in outputs for h in seen[n].errors_in), default=None)
    if forward_done and back_start:
        turnaround = (back_start - forward_done).total_seconds() * 1000
        out.print(
            f"coordinator: output fired {clock.at(forward_done)}, first error back {clock.at(back_start)} "
            f"({turnaround:.3f} ms: two hops, the loss and dL/da)"
        )
    out.print(_backward_table(view, seen, clock))
    done = max((seen[n].errors_out[-1].time for n in inputs if seen[n].errors_out), default=None)
    out.print(
        f"forward done {clock.at(forward_done)} ms; sample complete (every input neuron's error sent) "
        f"{clock.at(done)} ms"
    )


def _backward_table(view: RunView, seen: dict[str, Seen], clock: _Clock) -> Table:
    bwd = Table(title="Backward: errors flow output -> input, each neuron updates", title_justify="left")
    for col in ("layer", "neuron", "errors", "first in", "last in", "sent", "updated", "delta"):
        bwd.add_column(col, justify="left" if col in ("layer", "neuron") else "right", no_wrap=True)
    bwd.add_column("slowest hop", no_wrap=True)
    last = len(view.layers) - 1
    for layer in range(last, -1, -1):
        name, ids = view.layers[layer]
        expected = 1 if layer == last else len(view.layers[layer + 1][1])
        for nid in ids:
            s = seen[nid]
            times = [h.time for h in s.errors_in]
            hop = clock.slowest(nid, s.errors_in, True)
            bwd.add_row(
                name,
                nid,
                f"{len(s.errors_in)}/{expected}",
                clock.at(min(times, default=None)),
                clock.at(max(times, default=None)),
                clock.at(s.errors_out[0].time if s.errors_out else None),
                clock.at(s.updated),
                _delta(s.delta),
                f"{hop[0]:.3f} {hop[1]}" if hop else (COORDINATOR if layer == last else "-"),
            )
    return bwd


def _notes(out: Console, seen: dict[str, Seen], clock: _Clock) -> None:
    if clock.worst:
        lag, where = max(clock.worst)
        out.print(f"slowest hop: {where}, {lag:.3f} ms")
    if clock.negative:
        out.print(
            f"[dim]negative hops (at {', '.join(sorted(set(clock.negative)))}): a neuron stamps its send "
            "lines after sending, so on a busy machine a receiver can log first[/]"
        )
    missing = [nid for nid, s in seen.items() if not s.received]
    if missing:
        out.print(f"no events from {', '.join(missing)}: their logs rotated away, or they restarted")
