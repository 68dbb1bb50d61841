"""Faults at the edges: insecure links, a full disk, damaged checkpoints, non-finite numbers, killed
helpers, stops. Each test injects one fault through the real entry point and checks what is kept
and what the user is told."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from exmachina.config import ConfigError, config_from_dict
from exmachina.model.parameters import Parameters
from exmachina.model.topology import COORDINATOR
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import RunDir
from tests.helpers import learn_command, run_dir, run_learn, start_learn, wait_for, write_config, xor_config

CLEAR_TCP = {"transport": "tcp", "curve": "off"}


@pytest.mark.unit
def test_curve_off_on_a_host_others_reach_is_refused_unless_allowed():
    with pytest.raises(ConfigError, match=r"runtime\.curve: off over tcp on 10\.1\.2\.3: .*allow_clear_tcp"):
        config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "10.1.2.3"}))
    config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "10.1.2.3", "allow_clear_tcp": True}))
    config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "127.0.0.1"}))


def test_curve_off_over_tcp_is_warned_about_at_start(tmp_path):
    path = write_config(tmp_path, xor_config(runtime=CLEAR_TCP, training={"epochs": 2}))
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    assert "WARNING: curve: off over tcp" in result.stderr


# -- non-finite numbers ------------------------------------------------------------------------------

LINEAR = {
    "layers": [
        {"name": "input", "size": 2},
        {"name": "hidden1", "size": 3, "activation": "identity"},
        {"name": "output", "size": 1, "activation": "identity"},
    ]
}


def test_a_loss_that_turns_infinite_stops_the_run_and_keeps_the_last_finite_model(tmp_path):
    # identity units and a huge step: the weights grow without bound within a few updates
    path = write_config(
        tmp_path,
        xor_config(
            network=LINEAR, training={"learning_rate": 1e3, "epochs": 200}, runtime={"checkpoint_every": 1}
        ),
    )
    result = run_learn(path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged" in lines[0] and "nan_policy" in lines[0], result.stderr
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    model = Parameters.load(run / "model.npz")
    assert all(np.isfinite(a).all() for a in [*model.axons, *model.biases])
    assert f"update {summary['model_from_checkpoints']}" in lines[0]


def test_nan_policy_ignore_trains_on(tmp_path):
    config = xor_config(network=LINEAR, training={"learning_rate": 1e3, "epochs": 30, "nan_policy": "ignore"})
    result = run_learn(write_config(tmp_path, config))
    assert result.returncode == 0, result.stderr
    assert json.loads((only_run(tmp_path) / "summary.json").read_text())["status"] == "completed"


def only_run(tmp_path: Path) -> Path:
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("xor-")]
    return run


# -- checkpoints: damaged, ahead of the network, none yet ------------------------------------------


def neuron_pid(proc: subprocess.Popen, title: str) -> int:
    """The pid of one process of this run (a descendant of its supervisor) by its title's tail."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).strip() == f"exmachina: {title}":
                return child.pid
        except psutil.Error:
            continue
    return 0


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def epochs_done(tmp_path: Path) -> int:
    path = tmp_path / "runs" / "latest" / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return max((m["epoch"] for m in lines if m.get("event") == "epoch"), default=0)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def resume(run: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exmachina.supervisor", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=run.parent.parent,
    )


def ckpt(run: Path, owner: str, count: int) -> Path:
    return checkpoints.directory(run) / f"{owner}.{count:012d}.ckpt"


def test_a_restarting_neuron_passes_over_its_damaged_newest_checkpoint(tmp_path):
    path = write_config(tmp_path, xor_config(training={"epochs": 400}, runtime={"checkpoint_every": 20}))
    proc = start_learn(path)
    try:
        run = run_dir(tmp_path)
        wait_for(lambda: checkpoints.counts(run, "hidden1.0")[-1] >= 40, timeout=60)
        victim = wait_for(lambda: neuron_pid(proc, "neuron hidden1.0"))
        os.kill(victim, signal.SIGSTOP)  # no newer checkpoint while its newest is damaged
        older, newest = checkpoints.counts(run, "hidden1.0")[-2:]
        flip_a_byte(ckpt(run, "hidden1.0", newest))
        os.kill(victim, signal.SIGKILL)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert "damaged checkpoint (checksum mismatch): using an older checkpoint" in err
    log = (run / "neurons" / "hidden1.0.log").read_text()
    assert f"restored checkpoint at update {older}:" in log
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_resume_passes_over_a_damaged_newest_cut(tmp_path):
    path = write_config(tmp_path, xor_config(training={"epochs": 200}, runtime={"checkpoint_every": 20}))
    proc = start_learn(path)
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 40, timeout=60)
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 143, err
    run = run_dir(tmp_path)
    newest = checkpoints.counts(run, COORDINATOR)[-1]
    flip_a_byte(ckpt(run, "output.0", newest))
    result = resume(run)
    assert result.returncode == 0, result.stderr
    assert "damaged checkpoint (checksum mismatch): trying an older checkpoint" in result.stderr
    assert f"resuming at update {newest}" not in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 200


def test_a_run_that_crashes_before_its_first_checkpoint_resumes_from_its_initial_weights(tmp_path):
    config = xor_config(training={"epochs": 150}, runtime={"checkpoint_every": 100_000})
    proc = start_learn(write_config(tmp_path, config))
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 2, timeout=60)
        os.kill(wait_for(lambda: neuron_pid(proc, "coordinator")), signal.SIGKILL)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 1 and "--resume" in err, err
    run = run_dir(tmp_path)
    result = resume(run)
    assert result.returncode == 0, result.stderr
    assert "resuming at update 0" in result.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_neuron_restarted_with_a_checkpoint_ahead_of_the_network_never_learns_a_batch_twice(tmp_path):
    # Stop both input neurons: the batch in flight can complete in the hidden layer (whose neurons
    # checkpoint every update) but not in the network. A hidden neuron killed then has a newest
    # checkpoint one update ahead of the network's count, and the batch is replayed.
    config = xor_config(training={"epochs": 100_000}, runtime={"checkpoint_every": 1})
    proc = start_learn(write_config(tmp_path, config))
    inputs: list[int] = []
    try:
        run = run_dir(tmp_path)
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        inputs = [wait_for(lambda n=n: neuron_pid(proc, f"neuron input.{n}")) for n in (0, 1)]
        ahead = None
        for _ in range(50):
            for pid in inputs:
                os.kill(pid, signal.SIGSTOP)
            try:
                ahead = wait_for(
                    lambda: (
                        checkpoints.counts(run, "hidden1.0")[-1] > checkpoints.counts(run, COORDINATOR)[-1]
                    ),
                    timeout=1,
                )
                break
            except AssertionError:
                stopped_at = checkpoints.counts(run, COORDINATOR)[-1]
                for pid in inputs:
                    os.kill(pid, signal.SIGCONT)
                # stop again only once the network has moved on: under load, a stop right after
                # the SIGCONT would catch it where it was, try after try
                wait_for(lambda at=stopped_at: checkpoints.counts(run, COORDINATOR)[-1] > at, timeout=30)
        assert ahead, "the hidden layer never got ahead of the network"
        os.kill(wait_for(lambda: neuron_pid(proc, "neuron hidden1.0")), signal.SIGKILL)
        for pid in inputs:
            os.kill(pid, signal.SIGCONT)
        log = run / "neurons" / "hidden1.0.log"
        wait_for(lambda: "restart: lost" in log.read_text(), timeout=60)
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    finally:
        for pid in inputs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        proc.kill()
    assert code == 143, err
    text = log.read_text()
    assert "restart: lost" in text and "restart: lost -" not in text, text[-2000:]


# -- a full disk --------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, grown to 64 MB by calling what this yields."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.timeout(300)
def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it_once_space_is_back(
    tmp_path, small_disk
):
    mount, grow = small_disk
    # debug logs fill 2 MB within a few hundred samples; every neuron checkpoints every update
    config = xor_config(training={"epochs": 400}, runtime={"checkpoint_every": 1, "log_level": "debug"})
    path = write_config(tmp_path, config)
    raw = yaml.safe_load(path.read_text())
    raw["runtime"]["runs_dir"] = str(mount / "runs")
    path.write_text(yaml.safe_dump(raw))
    result = run_learn(path, timeout=240)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "disk full" in lines[0] and "--resume" in lines[0], result.stderr
    (run,) = [p for p in (mount / "runs").iterdir() if p.name.startswith("xor-")]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")], "no .tmp left behind"
    for file in checkpoints.directory(run).glob("*.ckpt"):
        owner, count = file.name.rsplit(".", 2)[0], int(file.name.rsplit(".", 2)[1])
        checkpoints.load(run, owner, count)  # every checkpoint whole
    grow()
    resumed = resume(run, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 400
    epochs = [
        json.loads(line)["epoch"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"epoch"' in line
    ]
    assert epochs == sorted(set(epochs)), "each epoch recorded once, across the stop"


# -- tcp: the coordinator's port ------------------------------------------------------------------------


PORTS = "40000 40299"  # a network namespace's own ephemeral range, small: a released port is soon reused


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root")
@pytest.mark.timeout(400)
def test_the_coordinator_binds_its_own_tcp_port_while_a_hundred_neurons_bind_theirs(tmp_path):
    """In a namespace whose ephemeral ports are few, a hundred neurons binding `tcp://host:*` soon
    take any port that was picked for the coordinator and let go before it bound."""
    wide = {
        "layers": [
            {"name": "input", "size": 2},
            {"name": "hidden1", "size": 100},
            {"name": "output", "size": 1},
        ]
    }
    for attempt in range(5):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        config = xor_config(network=wide, training={"epochs": 1}, runtime=CLEAR_TCP)
        command = " ".join(learn_command(write_config(folder, config)))
        setup = (
            f"ip link set lo up && echo {PORTS} > /proc/sys/net/ipv4/ip_local_port_range && exec {command}"
        )
        result = subprocess.run(
            ["unshare", "--net", "sh", "-c", setup], capture_output=True, text=True, timeout=120, cwd=folder
        )
        assert result.returncode == 0, f"attempt {attempt}: {result.stderr}"
        assert "Address already in use" not in result.stderr


# -- a killed zygote ----------------------------------------------------------------------------------


def test_a_run_whose_zygote_was_killed_and_then_completes_is_reported_completed(tmp_path):
    path = write_config(tmp_path, xor_config(training={"epochs": 300}, runtime={"checkpoint_every": 20}))
    proc = start_learn(path)
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 20, timeout=60)
        os.kill(wait_for(lambda: neuron_pid(proc, "supervisor [zygote]")), signal.SIGKILL)
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert "completed after 300 epochs" in out
    assert json.loads((run_dir(tmp_path) / "summary.json").read_text())["status"] == "completed"


# -- one run, one supervisor -------------------------------------------------------------------------


def test_a_run_still_running_is_not_resumed_beside_itself(tmp_path):
    """A second supervisor on one run directory would truncate the metrics and drop the checkpoints
    the first one is writing: the resume is one line and exit 2, and the live run goes on untouched."""
    proc = start_learn(write_config(tmp_path, xor_config(training={"epochs": 100_000})))
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        run = run_dir(tmp_path)
        refused = resume(run)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr == (
            f"exmachina: {run}: this run is still running (exmachina ps {run} lists its processes): "
            "stop it first\n"
        )
        done = epochs_done(tmp_path)
        wait_for(lambda: epochs_done(tmp_path) >= done + 5, timeout=60)  # it goes on
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 143, err
    epochs = [m["epoch"] for m in RunDir(run).read_metrics() if m.get("event") == "epoch"]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= done + 5
    # stopped, it is resumable at once: the claim died with the process that held it
    again = subprocess.Popen(
        [sys.executable, "-m", "exmachina.supervisor", "--resume", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        assert "resuming at update" in again.stdout.readline()
        again.send_signal(signal.SIGTERM)
        code, _, err = finish(again)
    finally:
        again.kill()
    assert code == 143, err


def test_a_completed_run_is_not_resumed_and_not_touched(tmp_path):
    assert run_learn(write_config(tmp_path, xor_config(training={"epochs": 20}))).returncode == 0
    run = run_dir(tmp_path)
    kept = {p: p.read_bytes() for p in (run / "metrics.jsonl", run / "model.npz", run / "summary.json")}
    refused = resume(run)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"exmachina: {run}: completed after 20 epochs: nothing to resume (its model is {run / 'model.npz'})\n"
    )
    assert {p: p.read_bytes() for p in kept} == kept


# -- stops that say what happened ----------------------------------------------------------------------


def test_a_stalled_run_says_so_in_one_line_and_claims_no_model(tmp_path):
    config = xor_config(training={"epochs": 100_000, "stall_timeout": 0.5})
    proc = start_learn(write_config(tmp_path, config))
    victim = 0
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        victim = wait_for(lambda: neuron_pid(proc, "neuron hidden1.1"))
        os.kill(victim, signal.SIGSTOP)  # alive, so never restarted: the samples stall
        code, out, err = finish(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
        proc.kill()
    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stalled" in lines[0] and "--resume" in lines[0], err
    run = run_dir(tmp_path)
    assert not (run / "model.npz").exists() and "model.npz" not in out


def test_sigterm_says_it_is_stopping_at_once_and_how_to_resume(tmp_path):
    proc = start_learn(write_config(tmp_path, xor_config(training={"epochs": 100_000})))
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        proc.send_signal(signal.SIGTERM)
        first = "\n"
        while first and not first.strip():  # the first thing said after the signal ("" at its end)
            first = proc.stderr.readline()
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert "stopping: saving the model" in first
    assert code == 143 and f"resume with: exmachina learn --resume {run_dir(tmp_path)}" in err, err


def test_the_terminal_shows_a_line_when_a_neuron_restarts(tmp_path):
    proc = start_learn(write_config(tmp_path, xor_config(training={"epochs": 300})))
    try:
        wait_for(lambda: epochs_done(tmp_path) >= 5, timeout=60)
        os.kill(wait_for(lambda: neuron_pid(proc, "neuron hidden1.2")), signal.SIGKILL)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert "exmachina: neuron hidden1.2 ended (killed by SIGKILL): restarting it from its checkpoint" in err


def exmachina(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exmachina", *args], capture_output=True, text=True, cwd=cwd)


def test_kill_signals_the_neuron_of_that_run_only_and_ps_counts_batches_as_batches(tmp_path):
    """Two runs of the same network on one machine: their neurons have the same titles."""
    folders = [tmp_path / "a", tmp_path / "b"]
    procs = []
    try:
        for folder in folders:
            folder.mkdir()
            config = xor_config(
                training={"epochs": 100_000, "batch_size": 2}, runtime={"stats_interval": 0.2}
            )
            procs.append(start_learn(write_config(folder, config)))
        runs = [run_dir(folder) for folder in folders]
        for run in runs:
            wait_for(lambda run=run: (run / "stats.json").exists(), timeout=60)
        shown = exmachina("ps", str(runs[0]), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        samples, batches = map(int, re.search(r": (\d+) samples in (\d+) batches", shown.stdout).groups())
        assert samples == 2 * batches > 0, shown.stdout
        before = [neuron_pid(p, "neuron hidden1.0") for p in procs]
        killed = exmachina("kill", str(runs[0]), "--neuron", "hidden1.0", cwd=tmp_path)
        assert killed.returncode == 0, killed.stderr
        assert f"(pid {before[0]})" in killed.stdout
        wait_for(lambda: neuron_pid(procs[0], "neuron hidden1.0") not in (0, before[0]), timeout=30)
        assert neuron_pid(procs[1], "neuron hidden1.0") == before[1], "the other run's neuron is untouched"
        bad = exmachina("kill", str(runs[0]), "--neuron", "hidden9.0", cwd=tmp_path)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            finish(proc)


@pytest.mark.unit
def test_a_model_file_with_a_flipped_byte_is_refused_in_one_line(tmp_path):
    from exmachina.model import parameters, trained

    model = tmp_path / "model.npz"
    parameters.initial(config_from_dict(xor_config())).save(model)
    flip_a_byte(model)
    with pytest.raises(trained.ModelError, match=r"model\.npz: .*damaged model file") as caught:
        trained.load(model)
    assert "\n" not in str(caught.value)
