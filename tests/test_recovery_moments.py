"""A neuron killed mid-run under Adam resumes its moments from its checkpoint: the run ends with the
very weights of the reference, which never stopped.

A kill loses nothing only at a moment when the victim's checkpoint is all it knows and no neuron has
learnt from the sample in flight, which the coordinator then drops and replays. The test makes that
moment instead of hoping for it: with a checkpoint at every update, it stops the coordinator and
waits until every neuron has learnt the last batch the coordinator sent and the coordinator has yet
to book it (every neuron's newest checkpoint one count past the coordinator's). Then nothing can
move; the victim is killed while its supervisor is stopped too, so that its restart comes only
after the coordinator has booked that batch and sent the next one, which stops at the dead neuron
before anyone learns from it.
"""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from exmachina.model.parameters import Parameters
from exmachina.model.topology import COORDINATOR
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
VICTIM = "hidden1.1"


def titled(proc, title: str) -> int:
    """The pid of the process of this run with this title (a descendant of the supervisor)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).strip() == title:
                return child.pid
        except psutil.Error:
            continue
    return 0


def newest(run, owner: str) -> int:
    found = checkpoints.counts(run, owner)
    return found[-1] if found else -1


def quiet_cut(run) -> str | None:
    """With the coordinator stopped: "cut" once every neuron has learnt a batch the coordinator has
    not booked (nothing is left to move), "busy" when the coordinator's last batch is still on its way
    forward (only the coordinator can move it on), None while errors still travel back."""
    neurons = {newest(run, nid) for nid in NEURONS}
    if len(neurons) != 1:
        return None
    (count,) = neurons
    booked = newest(run, COORDINATOR)
    return "cut" if count == booked + 1 else "busy" if count == booked else None


def stop_at_a_quiet_cut(proc, run, coordinator: int) -> int:
    """Stop the coordinator at a quiet cut (trying again on the next batch when its last one is on its
    way forward); the count every neuron stands at."""
    for _ in range(50):
        os.kill(coordinator, signal.SIGSTOP)
        if wait_for(lambda: quiet_cut(run), timeout=20) == "cut":
            return newest(run, VICTIM)
        os.kill(coordinator, signal.SIGCONT)
        booked = newest(run, COORDINATOR)
        wait_for(lambda b=booked: newest(run, COORDINATOR) > b or proc.poll() is not None, timeout=20)
    raise AssertionError("no quiet cut in 50 batches")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_neuron_killed_under_adam_resumes_its_moments_exactly(tmp_path, batch_size):
    training = {"learning_rate": 0.05, "epochs": 150, "batch_size": batch_size, "optimizer": "adam"}
    schedule = {"name": "cosine", "over": 300, "floor": 0.1, "warmup": 10}
    path = write_config(
        tmp_path,
        xor_config(training={**training, "schedule": schedule}, runtime={"checkpoint_every": 1}),
    )
    proc = start_learn(path)
    stopped = []
    try:
        run = run_dir(tmp_path)
        wait_for(lambda: newest(run, COORDINATOR) >= 40, timeout=60)
        coordinator = wait_for(lambda: titled(proc, "exmachina: coordinator"))
        victim = wait_for(lambda: titled(proc, f"exmachina: neuron {VICTIM}"))
        count = stop_at_a_quiet_cut(proc, run, coordinator)
        os.kill(proc.pid, signal.SIGSTOP)  # the supervisor: no restart yet
        stopped.append(proc.pid)
        os.kill(victim, signal.SIGKILL)
        os.kill(coordinator, signal.SIGCONT)
        wait_for(lambda: newest(run, COORDINATOR) == count, timeout=20)  # booked; the next batch is out
        os.kill(proc.pid, signal.SIGCONT)
        stopped.clear()
        _out, err = proc.communicate(timeout=120)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    restarts = [e for e in events if e.get("event") == "restart"]
    assert [(r["neuron"], r["updates_lost"]) for r in restarts] == [(VICTIM, 0)], restarts
    log = (run / "neurons" / f"{VICTIM}.log").read_text()
    assert f"restarted: restored checkpoint at update {count}" in log
    reference, _ = reference_after(path)
    assert_same_parameters(Parameters.load(run / "model.npz"), reference.p)
