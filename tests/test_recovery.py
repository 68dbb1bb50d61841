"""Neurons die and training goes on; runs stop and resume; bad state never gets loaded."""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time

import msgpack
import numpy as np
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmachina.model.parameters import Parameters
from exmachina.network import wire
from exmachina.rundir import checkpoints
from tests.helpers import (
    assert_same_parameters,
    reference_after,
    run_dir,
    start_learn,
    wait_for,
    write_config,
    xor_config,
)

NEURONS = ["input.0", "input.1", "hidden1.0", "hidden1.1", "hidden1.2", "output.0"]


def config(tmp_path, epochs=600, **runtime):
    return write_config(
        tmp_path,
        xor_config(
            training={"learning_rate": 0.5, "epochs": epochs}, runtime={"checkpoint_every": 20, **runtime}
        ),
    )


def metrics(tmp_path):
    path = run_dir(tmp_path) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def neuron_pid(proc, nid) -> int:
    """The pid of one neuron process of this run (a descendant of its supervisor)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).strip() == f"exmachina: neuron {nid}":
                return child.pid
        except psutil.Error:
            continue
    return 0


def epochs_done(tmp_path) -> int:
    return max((m["epoch"] for m in metrics(tmp_path) if m.get("event") == "epoch"), default=0)


def finish(proc, timeout=90):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


@pytest.mark.parametrize("victim", ["input.1", "hidden1.2", "output.0"])
def test_a_killed_neuron_is_restarted_from_its_checkpoint_and_training_goes_on(tmp_path, victim):
    proc = start_learn(config(tmp_path, epochs=1000))
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 30, timeout=60)
        old = wait_for(lambda: neuron_pid(proc, victim))
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (pid := neuron_pid(proc, victim)) and pid != old and pid, timeout=20)
        assert new != old
        code, _out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    run = run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["accuracy"] == 1.0
    restarts = [m for m in metrics(tmp_path) if m.get("event") == "restart"]
    assert [r["neuron"] for r in restarts] == [victim]
    assert 0 <= restarts[0]["updates_lost"] <= 20, "at most the checkpoint interval is lost"
    log = (run / "neurons" / f"{victim}.log").read_text()
    assert "restarted: restored checkpoint at update" in log and "lost" in log
    assert any(m.get("event") == "recovered" for m in metrics(tmp_path))


def test_chaos_a_random_neuron_killed_again_and_again(tmp_path):
    """The chaos test: kill a random neuron every ~40 samples; XOR must still be learnt."""
    proc = start_learn(config(tmp_path, epochs=700, max_restarts=100, restart_period=10.0))
    rng = random.Random(7)
    kills: list[tuple[float, str]] = []
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        for _ in range(8):
            target = epochs_done(tmp_path) + 10  # every ~40 samples (4 per epoch)
            wait_for(lambda t=target: epochs_done(tmp_path) >= t or proc.poll() is not None, timeout=60)
            if proc.poll() is not None:
                break
            victim = rng.choice(NEURONS)
            pid = wait_for(lambda v=victim: neuron_pid(proc, v), timeout=20)
            os.kill(pid, signal.SIGKILL)
            kills.append((time.time(), victim))
            # wait until it is back, so that each kill is one clean fault
            wait_for(lambda v=victim, p=pid: (q := neuron_pid(proc, v)) and q != p, timeout=20)
        code, _out, err = finish(proc, timeout=120)
    finally:
        proc.kill()
    assert code == 0, err
    assert len(kills) >= 6
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["accuracy"] == 1.0, summary
    events = metrics(tmp_path)
    restarts = [m for m in events if m.get("event") == "restart"]
    recovered = [m for m in events if m.get("event") == "recovered"]
    assert len(restarts) == len(kills)
    lost = [r["updates_lost"] for r in restarts]
    assert max(lost) <= 20
    resume_times = []
    for (killed_at, victim), restart in zip(kills, restarts):
        assert restart["neuron"] == victim
        after = [r["resumed"] for r in recovered if r["resumed"] >= restart["detected"]]
        resume_times.append(min(after) - killed_at)
    median, worst = statistics.median(resume_times), max(resume_times)
    print(
        f"\nchaos: {len(kills)} kills; kill -> training resumed: median {median:.3f} s, max {worst:.3f} s; "
        f"updates lost per kill: median {statistics.median(lost)}, max {max(lost)}"
    )


def test_crash_on_start_is_retried_then_the_run_stops_clearly(tmp_path):
    proc = start_learn(config(tmp_path, epochs=5000, max_restarts=3, restart_period=30.0))
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 10, timeout=60)
        run = run_dir(tmp_path)
        assert checkpoints.counts(run, "hidden1.0")
        # a whole checkpoint of the wrong shape, newer than any the neuron will write: it loads, and
        # the restore fails (a damaged one is passed over instead)
        wrong = checkpoints.neuron_state(np.zeros(7), 0.0, 10**11)
        checkpoints.save(run, "hidden1.0", 10**11, wrong)
        os.kill(wait_for(lambda: neuron_pid(proc, "hidden1.0")), signal.SIGKILL)
        code, _out, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert code == 1
    *crashes, last = err.strip().splitlines()
    assert "too many restarts" in last and "--resume" in last, err
    restarts = [line for line in crashes if line.endswith("restarting it from its checkpoint")]
    crashes = [line for line in crashes if line not in restarts]
    assert crashes and all(
        line.startswith("exmachina: neuron hidden1.0 crashed on start:") for line in crashes
    )
    assert restarts and all(line.startswith("exmachina: neuron hidden1.0 ended (") for line in restarts)
    log = (run / "neurons" / "supervisor.log").read_text()
    assert log.count("restarting hidden1.0") >= 3


def test_coordinator_death_stops_the_run_and_resume_finishes_it(tmp_path):
    path = config(tmp_path, epochs=150)
    proc = start_learn(path)
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 40, timeout=60)
        coordinator = next(
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if " ".join(c.cmdline()).strip() == "exmachina: coordinator"
        )
        coordinator.kill()
        code, _out, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert code == 1 and "the coordinator died" in err and "--resume" in err
    run = run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "crashed" and summary["model_from_checkpoints"] > 0
    assert Parameters.load(run / "model.npz").sizes == [2, 3, 1]
    result = run_learn_resume(run)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 150


def run_learn_resume(run):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "exmachina.supervisor", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=run.parent.parent,
    )


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path):
    path = config(tmp_path, epochs=200)
    proc = start_learn(path)
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 60, timeout=60)
        proc.send_signal(signal.SIGTERM)
        code, _out, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert code == 143, err
    run = run_dir(tmp_path)
    stopped_at = json.loads((run / "summary.json").read_text())["samples"]
    assert 0 < stopped_at < 800
    result = run_learn_resume(run)
    assert result.returncode == 0, result.stderr
    assert f"resuming at update {stopped_at}" in result.stdout
    reference, _ = reference_after(path)
    assert_same_parameters(Parameters.load(run / "model.npz"), reference.p)
    epochs = [m["epoch"] for m in metrics(tmp_path) if m.get("event") == "epoch"]
    assert epochs == list(range(1, 201)), "each epoch recorded once, across the stop"


def test_half_written_checkpoints_are_never_loaded(tmp_path):
    run = tmp_path
    state = checkpoints.neuron_state(np.array([0.5, -0.5]), 0.25, 40)
    checkpoints.save(run, "hidden1.0", 40, state)
    folder = checkpoints.directory(run)
    # a writer killed mid-write leaves only its .tmp (the rename never happened)
    (folder / ".hidden1.0.000000000060.ckpt.999.tmp").write_bytes(msgpack.packb({"owner": "hidden1.0"})[:3])
    assert checkpoints.counts(run, "hidden1.0") == [40]
    loaded = checkpoints.latest(run, "hidden1.0")
    assert loaded["updates"] == 40 and list(checkpoints.weights_of(loaded)) == [0.5, -0.5]
    # a damaged file under a final name is refused, never half-used
    (folder / "hidden1.0.000000000080.ckpt").write_bytes(b"\x92\x01")
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.latest(run, "hidden1.0")
    for count in (100, 120, 140, 160):
        checkpoints.save(run, "hidden1.0", count, state)
    assert checkpoints.counts(run, "hidden1.0") == [120, 140, 160], "only the last three are kept"
    # a neuron passes the counts it knows of instead of listing the directory: the same result
    kept = checkpoints.counts(run, "hidden1.0")
    for count in (180, 180, 200, 220):  # a count saved twice (asked for, and periodic) is one file
        checkpoints.save(run, "hidden1.0", count, state, kept)
        assert kept == checkpoints.counts(run, "hidden1.0")
    assert kept == [180, 200, 220]
    assert checkpoints.common_count(run, ["hidden1.0", "coordinator"]) is None


@pytest.mark.timeout(180)
def test_malformed_and_out_of_order_messages_never_wedge_a_live_neuron(tmp_path, no_leftovers):
    """Property-based: hypothesis throws arbitrary frames and stray-but-valid messages at the inbox
    of a live neuron while it trains; it must keep answering the real traffic exactly."""
    path = config(tmp_path, epochs=2000)  # still training while hypothesis makes and sends its frames
    proc = start_learn(path)
    ctx = zmq.Context()
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        sockets = next(no_leftovers.glob("exm-*/hidden1.0.inbox")).parent
        link = ctx.socket(zmq.PUSH)
        link.setsockopt(zmq.LINGER, 0)
        link.connect(f"ipc://{sockets / 'hidden1.0.inbox'}")
        stray_sample = st.integers(min_value=10**9, max_value=2**62)  # never a real sample id
        synapse_message = st.tuples(
            st.sampled_from([wire.FORWARD, wire.INFER, wire.BACKWARD]),
            stray_sample,
            st.integers(-3, 5),
            st.one_of(st.binary(max_size=24), st.floats(allow_nan=True)),
        ).map(lambda m: wire.encode(*m))
        junk = st.one_of(
            st.binary(max_size=40),
            st.lists(
                st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.floats(), st.none()),
                max_size=6,
            ).map(msgpack.packb),
            synapse_message,
        )

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frame=st.one_of(junk, synapse_message))
        def inject(frame):
            if frame[:2] == wire.encode(wire.STOP)[:2]:
                return  # a well-formed STOP is obeyed, by design
            link.send(frame)

        inject()
        code, _out, err = finish(proc, timeout=120)
    finally:
        proc.kill()
        ctx.destroy(linger=0)
    assert code == 0, err
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["supervisor_restarts"] == 0, "no injected message may kill the neuron"
    log = (run_dir(tmp_path) / "neurons" / "hidden1.0.log").read_text()
    assert log.count("dropped message") >= 100
    reference, _ = reference_after(path)
    assert_same_parameters(Parameters.load(run_dir(tmp_path) / "model.npz"), reference.p)


@pytest.mark.timeout(240)
def test_chaos_during_a_small_digits_run(tmp_path):
    """256-8-10 on 60 Semeion rows (mini-batches of 4, so it runs in seconds here): a random neuron
    of any layer is killed three times; the run completes and still learns (the reference reaches
    77% on these rows; chance is 10%)."""
    layers = [{"name": "input", "size": 256}, {"name": "hidden", "size": 8}, {"name": "output", "size": 10}]
    path = write_config(
        tmp_path,
        {
            "name": "digits",
            "seed": 1,
            "network": {"layers": layers},
            "training": {"learning_rate": 2.0, "epochs": 12, "batch_size": 4},
            "data": {"source": "semeion", "limit": 60},
            "runtime": {"checkpoint_every": 10, "max_restarts": 20, "log_level": "warning"},
        },
    )
    proc = start_learn(path)
    rng = random.Random(3)
    victims = [f"input.{rng.randrange(256)}", f"hidden.{rng.randrange(8)}", f"output.{rng.randrange(10)}"]
    run = None
    try:
        run = wait_for(lambda: next((tmp_path / "runs").glob("digits-*"), None), timeout=60)
        for number, victim in enumerate(victims, start=1):
            wait_for(lambda n=number: _digits_epochs(run) >= 2 * n or proc.poll() is not None, timeout=120)
            if proc.poll() is not None:
                break
            pid = wait_for(lambda v=victim: neuron_pid(proc, v), timeout=20)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda v=victim, p=pid: (q := neuron_pid(proc, v)) and q != p, timeout=30)
        code, _out, err = finish(proc, timeout=180)
    finally:
        proc.kill()
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    restarts = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["neuron"] for r in restarts if r.get("event") == "restart"] == victims
    assert summary["status"] == "completed" and summary["accuracy"] >= 0.5, summary


def _digits_epochs(run) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if '"event": "epoch"' in line)
