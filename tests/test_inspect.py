"""Looking inside a run: logs, inspect, ps and trace, on real networks (XOR, one process per neuron)."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from exmachina.cli import app
from exmachina.config import config_from_dict
from exmachina.model.parameters import Parameters, initial
from exmachina.rundir.directory import RunDir
from exmachina.rundir.logs import close_log, open_log
from exmachina.tools.logview import Source
from tests.helpers import run_learn, start_learn, wait_for, write_config, xor_config

NEURONS = ["input.0", "input.1", "hidden1.0", "hidden1.1", "hidden1.2", "output.0"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} ")


def cli(*args: object) -> tuple[int, str]:
    """Run `exmachina ARGS` in-process, on a wide terminal so tables are not squeezed."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def finished_run(tmp_path, **sections) -> Path:
    path = write_config(tmp_path, xor_config(**sections))
    done = run_learn(path)
    assert done.returncode == 0, done.stderr
    return next((tmp_path / "runs").glob("xor-*"))


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory) -> Path:
    """One short XOR run at log level debug, with frequent stats lines: read by several tests."""
    return finished_run(
        tmp_path_factory.mktemp("debug"),
        training={"epochs": 30},
        runtime={"log_level": "debug", "stats_interval": 0.05},
    )


def stamps(output: str) -> list[str]:
    return [line[:26] for line in output.splitlines() if STAMP.match(line)]


def test_a_neurons_log_shows_its_wiring_and_weight_updates(debug_run):
    code, out = cli("logs", debug_run, "--neuron", "hidden1.1")
    assert code == 0, out
    lines = out.splitlines()
    assert all(" hidden1.1  " in line for line in lines), [ln for ln in lines if " hidden1.1  " not in ln]
    assert "wired: 2 input synapses from input.0, input.1; 1 output synapses to output.0" in out
    assert "update sample=1 delta=" in out and "update sample=120 delta=" in out
    assert "stats updates=" in out and "final updates=120 " in out
    assert stamps(out) == sorted(stamps(out))

    code, info = cli("logs", debug_run, "--neuron", "hidden1.1", "--level", "info")
    assert code == 0 and " DEBUG " not in info and "wired: " in info and "final updates=120" in info

    code, as_json = cli("logs", debug_run, "-n", "hidden1.1", "--json")
    records = [json.loads(line) for line in as_json.splitlines()]
    assert len(records) == len(lines)
    assert {tuple(r) for r in records} == {("time", "level", "neuron", "message")}
    assert {r["neuron"] for r in records} == {"hidden1.1"}
    assert records[0]["message"].startswith("start pid=") and "T" in records[0]["time"]

    code, err = cli("logs", debug_run, "--neuron", "hidden1.7")
    assert code == 2 and "no neuron 'hidden1.7'" in err and "hidden1.0, hidden1.1, hidden1.2" in err


def test_logs_of_a_layer_merge_in_time_order(debug_run):
    code, out = cli("logs", debug_run, "--layer", "hidden1")
    assert code == 0, out
    names = {line.split()[3] for line in out.splitlines() if STAMP.match(line)}
    assert names == {"hidden1.0", "hidden1.1", "hidden1.2"}
    assert stamps(out) == sorted(stamps(out))
    written = sum(len((debug_run / f"neurons/hidden1.{i}.log").read_text().splitlines()) for i in range(3))
    assert len(out.splitlines()) == written

    code, everything = cli("logs", debug_run)
    assert code == 0
    names = {line.split()[3] for line in everything.splitlines() if STAMP.match(line)}
    assert names == {*NEURONS, "coordinator", "supervisor"}
    assert stamps(everything) == sorted(stamps(everything))

    code, err = cli("logs", debug_run, "--layer", "hidden9")
    assert code == 2 and "input, hidden1, output" in err


def test_inspect_tells_a_neurons_story(debug_run):
    config = config_from_dict(yaml.safe_load((debug_run / "config.yaml").read_text()))
    first = initial(config)
    model = Parameters.load(debug_run / "model.npz")

    code, out = cli("inspect", debug_run, "--neuron", "hidden1.1")
    assert code == 0, out
    assert "layer 1 (hidden1), neuron 2 of 3, tanh" in out
    assert "in   2 from input.0, input.1" in out and "out  1 to output.0" in out
    row = next(line for line in out.splitlines() if "-> output.0" in line)
    assert f"{first.axons[1][1][0]:.4f}" in row and f"{model.axons[1][1][0]:.4f}" in row
    assert any(ch in row for ch in "▁▂▃▄▅▆▇█"), row  # how the weight moved
    bias = next(line for line in out.splitlines() if "│ bias" in line)
    assert f"{first.biases[1][1]:.4f}" in bias and f"{model.biases[1][1]:.4f}" in bias
    assert "stats reports" in out and "activity" in out and "|error|" in out
    assert re.search(r"received \d+, sent \d+, dropped 0", out) and "updates 120" in out
    assert "restarts: 0" in out

    code, out = cli("inspect", debug_run, "--neuron", "input.0")
    assert "in   1 from coordinator" in out and "out  3 to hidden1.0, hidden1.1, hidden1.2" in out
    code, out = cli("inspect", debug_run, "--neuron", "output.0")
    assert "out  1 to coordinator" in out and "fixed at 1" in out
    code, out = cli("inspect", debug_run, "--neuron", "coordinator")
    assert code == 2 and "not a neuron" in out


def test_trace_lists_every_neuron_of_every_layer_forward_then_backward(debug_run):
    code, out = cli("trace", debug_run, "--sample", "6")
    assert code == 0, out
    assert "sample 6" in out and "training sample" in out
    forward, _, backward = out.partition("Backward")
    assert "Forward" in forward and backward

    def rows(section: str) -> list[str]:
        found = []
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip("│ ").split("│")]
            if len(cells) > 2 and cells[1] in NEURONS:
                found.append(cells)
        return found

    fwd, bwd = rows(forward), rows(backward)
    assert [r[1] for r in fwd] == NEURONS  # input layer first
    assert [r[1] for r in bwd] == ["output.0", "hidden1.0", "hidden1.1", "hidden1.2", "input.0", "input.1"]
    assert [r[2] for r in fwd] == ["1/1", "1/1", "2/2", "2/2", "2/2", "3/3"]
    assert [r[2] for r in bwd] == ["1/1", "1/1", "1/1", "1/1", "3/3", "3/3"]
    # causality, layer by layer (ms from the sample's first event): a neuron logs a message it received
    # before it acts on it, so the next layer's last arrival comes after this layer's first
    first_in, last_in = [float(r[3]) for r in fwd], [float(r[4]) for r in fwd]
    assert min(last_in[2:5]) > max(first_in[:2]) and last_in[5] > max(last_in[2:5])
    first_err, last_err = [float(r[3]) for r in bwd], [float(r[4]) for r in bwd]
    assert min(last_err[1:4]) > first_err[0] > last_in[5] and min(last_err[4:]) > max(first_err[1:4])
    assert "sample complete" in out

    code, out = cli("trace", debug_run, "--sample", "100000")
    assert code == 2 and "not in the logs" in out


def test_trace_of_a_run_not_logged_at_debug_says_so_and_exits_2(tmp_path, debug_run):
    run = tmp_path / "runs" / "xor-info"
    run.mkdir(parents=True)
    config = yaml.safe_load((debug_run / "config.yaml").read_text())
    config["runtime"]["log_level"] = "info"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, out = cli("trace", str(run), "--sample", "3")
    assert code == 2
    assert out.count("\n") == 1 and "level info" in out and "debug" in out


def test_ps_lists_every_neuron_of_a_live_run_with_its_pid(tmp_path):
    path = write_config(
        tmp_path,
        xor_config(training={"epochs": 100_000}, runtime={"log_level": "info", "stats_interval": 0.2}),
    )
    proc = start_learn(path)
    try:
        run = wait_for(lambda: next((tmp_path / "runs").glob("xor-*"), None), timeout=30)
        stats = wait_for(lambda: _stats_of_all(run), timeout=30)
        code, out = cli("ps", str(run))
        assert code == 0, out
        for nid in NEURONS:
            row = next(line for line in out.splitlines() if f"│ {nid} " in line)
            cells = [c.strip() for c in row.strip("│ ").split("│")]
            pid = int(cells[2])
            assert pid == stats["neurons"][nid]["pid"] and psutil.pid_exists(pid), row
            assert float(cells[5]) > 0, row  # messages in per second: it is learning
        assert re.search(r": \d+ samples in \d+ batches, \d+ samples/s", out), out
        coordinator = next(line for line in out.splitlines() if "│ coordinator " in line)
        assert f" {stats['coordinator']['pid']} " in coordinator, coordinator
        assert "│ supervisor " in out

        # `logs --follow` on the live run keeps printing until Ctrl-C, then ends quietly
        follower = subprocess.Popen(
            [sys.executable, "-m", "exmachina", "logs", str(run), "-n", "hidden1.0", "-f"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
        try:
            reader.start()
            wait_for(lambda: lines, timeout=10)  # it has printed the backlog: now it is following
            log = run / "neurons" / "hidden1.0.log"
            size = log.stat().st_size
            wait_for(lambda: log.stat().st_size > size, timeout=10)
            # the follower reads on its own schedule: wait until it has printed what was appended
            wait_for(lambda: any("stats updates=" in line for line in lines), timeout=10)
            follower.send_signal(signal.SIGINT)
            follower.wait(timeout=10)
            reader.join(timeout=10)
            err = follower.stderr.read()
            out = "".join(lines)
        finally:
            follower.kill()
        assert follower.returncode == 0 and not err, err
        assert "start pid=" in out and "stats updates=" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    code, out = cli("ps", str(run))
    assert code == 1 and "has finished (stopped" in out and "no live processes" in out


def _stats_of_all(run):
    try:
        stats = json.loads((run / "stats.json").read_text())
    except (OSError, ValueError):
        return None
    return stats if set(stats.get("neurons", {})) == set(NEURONS) else None


def test_log_rotation_bounds_disk_use_and_logs_reads_the_rotated_files(tmp_path):
    max_bytes = 20_000
    run = finished_run(
        tmp_path,
        training={"epochs": 60},
        runtime={"log_level": "debug", "log_max_bytes": max_bytes, "log_backups": 2},
    )
    neurons = run / "neurons"
    files = sorted(neurons.iterdir())
    longest = max(len(line) for f in files for line in f.read_bytes().splitlines(keepends=True))
    for nid in NEURONS:
        mine = [f for f in files if f.name == f"{nid}.log" or f.name.startswith(f"{nid}.log.")]
        assert [f.name for f in mine] == [f"{nid}.log", f"{nid}.log.1", f"{nid}.log.2"]  # it did rotate
        total = sum(f.stat().st_size for f in mine)
        assert total <= 3 * max_bytes + longest, (nid, total)

    code, out = cli("logs", run, "--neuron", "hidden1.0")
    assert code == 0
    oldest = (neurons / "hidden1.0.log.2").read_text().splitlines()[0]
    newest = (neurons / "hidden1.0.log").read_text().splitlines()[-1]
    lines = out.splitlines()
    assert lines[0] == oldest and lines[-1] == newest
    assert stamps(out) == sorted(stamps(out))
    samples = [int(m[1]) for m in re.finditer(r"update sample=(\d+) ", out)]
    assert samples == list(range(samples[0], samples[-1] + 1)) and samples[-1] == 240


def test_follow_reads_a_live_run_across_rotations_and_stops_when_it_ends(tmp_path):
    path = write_config(
        tmp_path,
        xor_config(
            training={"epochs": 100},
            # backups enough that a follower starved by a loaded machine (several rotations between
            # two of its polls) still finds the file it followed
            runtime={"log_level": "debug", "log_max_bytes": 50_000, "log_backups": 6},
        ),
    )
    proc = start_learn(path)
    follower = None
    try:
        log = wait_for(lambda: next((tmp_path / "runs").glob("xor-*/neurons/hidden1.0.log"), None))
        run = log.parent.parent
        follower = subprocess.Popen(
            [sys.executable, "-m", "exmachina", "logs", str(run), "-n", "hidden1.0", "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = follower.communicate(timeout=90)  # it ends by itself once the run has ended
        assert proc.wait(timeout=30) == 0
    finally:
        for p in (follower, proc):
            if p is not None and p.poll() is None:
                p.kill()
        proc.communicate()
    assert follower.returncode == 0, err
    samples = [int(m[1]) for m in re.finditer(r"update sample=(\d+) ", out)]
    assert samples == list(range(samples[0], 401)), "a gap or a repeat across a rotation"
    assert len(samples) > 3 * 60  # followed across several rotations (about 55 samples a file)
    assert (log.parent / "hidden1.0.log.2").exists()
    assert out.rstrip().endswith("hidden1.0  exit")


def test_a_follower_sees_every_line_once_however_the_file_rotates(tmp_path):
    """Source.poll against the real log's rotation: rotations between polls, even two at once."""
    path = tmp_path / "n.log"
    log = open_log("n", path, "debug", 2_000, 3)
    source = Source(path)
    seen = [r.message for r in source.backlog()]
    written = 0
    for burst in [1, 5, 30, 0, 40, 2, 60, 1]:  # 60 lines of ~75 bytes: two rotations between polls
        for _ in range(burst):
            written += 1
            log.info("line %d %s", written, "x" * 30)
        seen += [r.message for r in source.poll()]
    assert seen == [f"line {i} {'x' * 30}" for i in range(1, written + 1)]
    close_log(log)


@pytest.mark.unit
def test_a_follower_loses_no_line_to_a_rotation_that_happens_while_it_reads(tmp_path):
    """A writer thread rotates the real log (about 20 lines a file) while the follower polls; the
    interpreter switches threads every few microseconds, so rotations land inside polls, between a
    follower's listing of the files and its opening them. The writer keeps within three files of
    the follower: a file rotated out of existence before anyone read it is lost to every reader."""
    switch = sys.getswitchinterval()
    path, total, window = tmp_path / "n.log", 4_000, 60
    log = open_log("n", path, "debug", 1_500, 8)
    source = Source(path)
    seen = [r.message for r in source.backlog(whole=False)]
    caught_up = threading.Condition()

    def write() -> None:
        for i in range(1, total + 1):
            with caught_up:
                caught_up.wait_for(lambda i=i: len(seen) >= i - window, timeout=30)
            log.info("line %d %s", i, "x" * 30)

    writer = threading.Thread(target=write, daemon=True)
    sys.setswitchinterval(1e-5)
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while len(seen) < total and time.monotonic() < deadline:
            fresh = [r.message for r in source.poll()]
            with caught_up:
                seen.extend(fresh)
                caught_up.notify()
        writer.join(timeout=30)
        seen += [r.message for r in source.poll()]
    finally:
        sys.setswitchinterval(switch)
        source.close()
        close_log(log)
    numbers = [int(m.split()[1]) for m in seen]
    assert numbers == list(range(1, total + 1)), "a gap or a repeat across a rotation"


def test_logs_of_more_processes_than_the_soft_file_limit_are_read_and_followed(tmp_path):
    """A cursor holds its log open, one file per process: `logs` makes room up to the hard limit, and
    says in one line when the hard limit itself is too low."""
    hidden = 1500
    config = config_from_dict(
        xor_config(
            network={"layers": [{"name": "input", "size": 2}, {"name": "hidden1", "size": hidden}]},
            runtime={"log_level": "info", "runs_dir": str(tmp_path / "runs")},
        )
    )
    run = RunDir.create(config)
    ids = [f"input.{i}" for i in range(2)] + [f"hidden1.{i}" for i in range(hidden)]
    for nid in ids:
        log = open_log(nid, run.log(nid), "info", 0, 1)
        log.info("start pid=1")
        close_log(log)
    run.write_summary({"status": "completed"})

    def logs(soft: int, hard: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "exmachina", "logs", str(run.path), "--follow"],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        )

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < hidden + 100:
        pytest.skip(f"the hard limit on open files here is {hard}")
    room = logs(1024, hard)
    assert room.returncode == 0, room.stderr
    assert sorted(line.split()[3] for line in room.stdout.splitlines()) == sorted(ids)
    cramped = logs(1024, 1024)
    assert cramped.returncode == 2
    assert cramped.stdout == "" and cramped.stderr == (
        f"exmachina: {len(ids) + 2} logs are more than the 1024 files this process may open "
        "(ulimit -Hn): name fewer with --neuron or --layer\n"
    )
