"""The bench's results as tables, figures rounded for reading (results.json keeps them whole)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from exmachina.bench.profiles import PIPELINED_TRAINING

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
    console.print(_headline(results))
    if "transport" in results:  # a section `--only` left out has no table
        for line in _transport_lines(results["transport"]):
            console.print(line)
    if "training" in results:
        console.print(_training_table(results["training"]))
    if results.get("pipelining"):
        console.print(_pipelining_table(results["pipelining"]))
    if results.get("pipelined_accuracy"):
        console.print(_accuracy_line(results["pipelined_accuracy"]))
    if results.get("logging"):
        console.print(_logging_table(results["logging"]))
    if results.get("accuracy"):
        console.print(_accuracy_table(results["accuracy"]))
    if "startup" in results:
        console.print(_startup_table(results["startup"]))
    if "cores" in results:
        console.print(_cores_table(results["cores"]))
    failed = failures(results)
    if failed:
        console.print(f"[red]{len(failed)} row(s) failed:[/] " + "; ".join(failed))
    if results.get("socket_files_left"):
        console.print(f"[red]socket files left behind:[/] {results['socket_files_left']}")


def _table(title: str, *columns: str) -> Table:
    """A table of right-aligned figures; a "task" column is text, aligned left."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col == "task" else "right")
    return table


def _headline(results: dict) -> str:
    m = results["machine"]
    return (
        f"[bold]exmachina bench ({results['profile']['name']})[/]  {m['cpu_count']} × {m['cpu_model']}, "
        f"Python {m['python']}, pyzmq {m['pyzmq']} / libzmq {m['libzmq']}, load {m['load_average'][0]:.1f}"
        f" -> {m.get('load_average_end', [0])[0]:.1f}, {results['wall_s']:.0f} s"
    )


def _transport_lines(t: dict) -> list[str]:
    """The ipc ceiling and round trip on one line, then a line per bare network."""
    c, lat = t.get("ceiling", {}), t.get("latency", {})
    lines = [
        f"transport ceiling (ipc PUSH->PULL, 2 processes, {c.get('message_bytes', '?')}-byte msgpack): "
        f"{_rate(c.get('messages_per_s'))} msgs/s;  ipc round trip: median "
        f"{_fmt(lat.get('median_us'), '.1f')} µs, p99 {_fmt(lat.get('p99_us'), '.1f')} µs"
    ]
    for bare in t.get("bare", []):
        shown = (
            f"{_rate(bare['samples_per_s'])} samples/s online ({_rate(bare['messages_per_s'])} msgs/s)"
            if bare["status"] == "ok"
            else FAILED
        )
        lines.append(f"{bare['name']} (same processes and messages, no math): {shown}")
    return lines


def _training_table(rows: list[dict]) -> Table:
    table = _table(
        "training (process network vs dense reference, same task)",
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
    )
    for row in rows:
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
    return table


def _pipelining_table(rows: list[dict]) -> Table:
    table = _table(
        "pipelining, 256-8-10 online, K samples in flight",
        "K",
        "samples",
        "samples/s",
        "vs K=1",
        "CPU µs/msg",
    )
    base = next((r for r in rows if r.get("k") == 1 and r["status"] == "ok"), None)
    for row in rows:
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
    return table


def _accuracy_line(accuracy: dict) -> str:
    """Held-out accuracy after the same epochs, online (the reference) and K in flight."""
    row, online = accuracy["pipelined"], accuracy["online_reference"]
    k, epochs = accuracy["k"], accuracy["epochs"]
    if row["status"] != "ok" or row.get("holdout_accuracy") is None:
        pipelined = FAILED
    else:
        held, gap = 100 * row["holdout_accuracy"], 100 * (row["holdout_accuracy"] - online)
        pipelined = f"{held:.1f}% ({gap:+.1f} points, {_rate(row['samples_per_s'])} samples/s)"
    reference = accuracy.get("pipelined_reference")
    same = "" if reference is None else f", the reference {100 * reference:.1f}%"
    return (
        f"held-out accuracy after {epochs} epochs, 256-8-10 online lr 2: online (reference, equal to "
        f"the exact network) {100 * online:.1f}%;  K={k} in flight, one Adam step a group, lr "
        f"{PIPELINED_TRAINING['learning_rate']} (process network) {pipelined}{same}"
    )


def _logging_table(rows: list[dict]) -> Table:
    table = _table("log levels, xor 2-2-1 online", "level", "samples/s", "vs off", "CPU µs/msg")
    base = rows[0] if rows[0]["status"] == "ok" else None
    for row in rows:
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
    return table


def _accuracy_table(rows: list[dict]) -> Table:
    """Samples and seconds to each held-out accuracy, per config and engine ('-': not reached)."""
    thresholds = next((list(r["reached"]) for r in rows if r["status"] == "ok"), [])
    columns = [f"{label} {float(t):.0%}" for t in thresholds for label in ("samples to", "s to")]
    table = _table("time to held-out accuracy (first epoch end at or above)", "task", *columns, "best")
    for row in rows:
        if row["status"] != "ok":
            table.add_row(row["name"], FAILED)
            continue
        cells = []
        for t in thresholds:
            hit = row["reached"][t]
            cells += [_count(hit and hit["samples"]), _fmt(hit and hit["seconds"], ".1f")]
        table.add_row(row["name"], *cells, _fmt(row["best_holdout_accuracy"], ".3f"))
    return table


def _startup_table(rows: list[dict]) -> Table:
    table = _table(
        "start-up (XOR-shaped 2-(N-3)-1)",
        "neurons",
        "launch->ready s",
        "wiring s",
        "USS/neuron MB (median)",
        "max",
        "tree PSS MB",
        "peak PSS MB",
    )
    for row in rows:
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
    return table


def _cores_table(pairs: list[dict]) -> Table:
    """A column per core count; with more than one, the speed-up of the most over 1."""
    counts = pairs[0]["counts"] if pairs else [1]
    columns = [f"{n} core{'s' * (n > 1)} samples/s" for n in counts]
    if len(counts) > 1:
        columns.append(f"{counts[-1]} / 1")
    table = _table(f"cores (of this machine's {counts[-1]})", "task", *columns)
    for pair in pairs:
        rates = [pair[f"cores_{n}"] for n in counts]
        cells = [_rate(r.get("samples_per_s")) if r["status"] == "ok" else r["status"] for r in rates]
        speedup = [_fmt(pair.get(f"speedup_{counts[-1]}_over_1"), ".2f") + "×"] if len(counts) > 1 else []
        table.add_row(pair["task"], *cells, *speedup)
    return table


def failures(results: dict) -> list[str]:
    """Why each failed row failed, and each row that left socket files behind."""
    transport = results.get("transport", {})
    rows = [
        *(transport[k] for k in ("ceiling", "latency") if k in transport),
        *transport.get("bare", []),
        *results.get("training", []),
        *results.get("pipelining", []),
        *([results["pipelined_accuracy"]["pipelined"]] if results.get("pipelined_accuracy") else []),
        *results.get("accuracy", []),
        *results.get("startup", []),
        *(pair[f"cores_{n}"] for pair in results.get("cores", []) for n in pair["counts"]),
    ]
    failed = [f"{r.get('name')}: {r.get('error')}" for r in rows if r.get("status") == "failed"]
    return failed + [f"{r.get('name')}: socket files left behind" for r in rows if r.get("socket_files_left")]
