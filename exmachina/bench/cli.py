"""`python -m exmachina.bench [--quick] [--out FILE]`: how fast the process network is, and against what."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from exmachina.bench.profiles import FULL, QUICK, SEMEION
from exmachina.bench.render import failures, render
from exmachina.bench.suite import SECTIONS, run_bench

DEFAULT_OUT = Path("bench") / "results.json"
SERVE_OUT = Path("bench") / "serve.json"
RAY_OUT = Path("bench") / "ray.json"


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


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no section {', '.join(unknown)}; there are {', '.join(SECTIONS)}")
    return names


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
    parser.add_argument(
        "--only",
        type=_sections,
        default=SECTIONS,
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only the serve rows: rows/s and latency of `exmachina serve` on 256-8-10 against Model.predict",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="only the Ray rows: start-up, memory and samples/s on a two-node local cluster against local",
    )
    parser.add_argument("--ray-large", action="store_true", help="with --ray: a 2,000-neuron network too")
    parser.add_argument(
        "--serve-seconds", type=float, default=3.0, help="seconds each serve row runs (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args)
    if args.ray:
        return _cluster(args)
    profile = QUICK if args.quick else FULL
    if args.startup is not None:
        profile = replace(profile, startup_sizes=args.startup)
    signal.signal(signal.SIGTERM, _terminated)  # unwind, so that the row in progress stops its tree
    console = _console()
    say = lambda text: console.print(text, style="dim")  # noqa: E731
    results = run_bench(profile, args.out, args.semeion, say=say, only=args.only)
    render(results, console)
    console.print(f"results: {args.out}")
    return 1 if failures(results) or results["socket_files_left"] else 0


def _serve(args: argparse.Namespace) -> int:
    """The serve rows alone, written to --out (bench/serve.json unless named)."""
    from exmachina.bench.machine import machine_info
    from exmachina.bench.serving import render_serve, run_serve_bench

    signal.signal(signal.SIGTERM, _terminated)
    out = SERVE_OUT if args.out == DEFAULT_OUT else args.out
    console = _console()
    results = {"machine": machine_info()}
    results |= run_serve_bench(args.semeion, args.serve_seconds, say=lambda t: console.print(t, style="dim"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    render_serve(results, console)
    console.print(f"results: {out}")
    wrong = sum(row["wrong"] for row in results["served"])
    return 1 if wrong or results["leaked_processes"] or results["socket_files_left"] else 0


def _cluster(args: argparse.Namespace) -> int:
    """The Ray rows alone, written to --out (bench/ray.json unless named)."""
    import tempfile

    from exmachina.bench.cluster import render_cluster, run_cluster_bench
    from exmachina.bench.machine import machine_info

    signal.signal(signal.SIGTERM, _terminated)
    out = RAY_OUT if args.out == DEFAULT_OUT else args.out
    console = _console()
    results = {"machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="exmachina-bench-") as workdir:
        say = lambda t: console.print(t, style="dim")  # noqa: E731
        results |= run_cluster_bench(args.semeion, Path(workdir), args.ray_large, say)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    render_cluster(results, console)
    console.print(f"results: {out}")
    return 1 if any(row["status"] != "ok" for row in results["cluster"]) else 0
