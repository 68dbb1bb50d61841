"""A live network under fire: garbage on its sockets, Ctrl-C, and its supervisor SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import tempfile

import msgpack
import numpy as np
import psutil
import zmq

from exmachina.model.parameters import Parameters
from exmachina.network import wire
from exmachina.network.rehearsal import rehearse
from tests.helpers import (
    assert_same_parameters,
    exmachina_processes,
    reference_after,
    run_dir,
    start_learn,
    training_underway,
    wait_for,
    write_config,
)
from tests.helpers import xor_config as make

ONE = wire.payload(np.array([0.5]))


def long_xor(tmp_path, epochs: int = 600, **runtime):
    return write_config(tmp_path, make(training={"learning_rate": 0.5, "epochs": epochs}, runtime=runtime))


def test_garbage_on_a_live_neurons_sockets_is_dropped_and_changes_nothing(tmp_path, no_leftovers):
    path = long_xor(tmp_path, epochs=1500)  # long enough to be still training when the garbage lands
    proc = start_learn(path)
    try:
        training_underway(tmp_path)
        sockets = wait_for(lambda: next(no_leftovers.glob("exm-*/hidden1.1.inbox"), None)).parent
        garbage = [
            b"\x00not msgpack",
            msgpack.packb({"kind": "activity"}),
            msgpack.packb([99, 1, 2, 3.0]),
            msgpack.packb([wire.FORWARD, "seventeen", 0, ONE]),
            msgpack.packb([wire.FORWARD, 10**9, 7, ONE]),  # no synapse 7
            msgpack.packb([wire.FORWARD, 10**9, 0, b"\x00" * 5]),  # not whole float64s
            msgpack.packb([wire.BACKWARD, 10**9, 0, ONE]),  # an error for a sample never fired
            msgpack.packb([wire.WIRE, 999, [], [], 0]),  # a protocol this neuron does not speak
            msgpack.packb([wire.READY, "hidden1.1"]),  # a coordinator's message, not a neuron's
        ]
        ctx = zmq.Context()
        try:
            link = ctx.socket(zmq.PUSH)
            link.setsockopt(zmq.LINGER, 1000)
            link.connect(f"ipc://{sockets / 'hidden1.1.inbox'}")
            for frame in garbage:
                link.send(frame)
            link.close()
        finally:
            ctx.term()
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    log = (run_dir(tmp_path) / "neurons" / "hidden1.1.log").read_text()
    assert log.count("dropped message") >= 9, log[-2000:]
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["restarts"] == 0, "garbage must never kill a neuron"
    # the garbage changed nothing: the trained weights still equal the reference's
    reference, _ = reference_after(path)
    assert_same_parameters(Parameters.load(run_dir(tmp_path) / "model.npz"), reference.p)


def test_ctrl_c_mid_training_saves_the_model_and_stops_everything(tmp_path):
    proc = start_learn(long_xor(tmp_path, epochs=5000))
    try:
        training_underway(tmp_path)
        titles = set(exmachina_processes().values())
        assert {
            "exmachina: supervisor",
            "exmachina: coordinator",
            "exmachina: neuron hidden1.2",
            "exmachina: neuron input.0",
            "exmachina: neuron output.0",
        } <= titles
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    run = run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert Parameters.load(run / "model.npz").sizes == [2, 3, 1]
    assert "stopped after" in out


def test_sigterm_stops_cleanly_with_exit_143(tmp_path):
    proc = start_learn(long_xor(tmp_path, epochs=5000))
    try:
        training_underway(tmp_path)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert (run_dir(tmp_path) / "model.npz").exists()


def test_neurons_exit_when_the_supervisor_is_killed(tmp_path):
    proc = start_learn(long_xor(tmp_path, epochs=5000))
    try:
        training_underway(tmp_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 7  # 6 neurons, the coordinator (and the zygote)
        proc.kill()  # SIGKILL: the supervisor gets no chance to clean up
        proc.wait(timeout=10)
        _gone, alive = psutil.wait_procs(children, timeout=8)
        assert not alive, f"orphans: {[p.pid for p in alive]}"
    finally:
        proc.kill()
        proc.communicate()


def test_the_zygotes_rehearsal_leaves_no_thread_file_or_socket(tmp_path, monkeypatch):
    # The zygote forks every neuron after rehearsing: a ZeroMQ thread left running would be a thread
    # its children lack, a socket or log file left open would be shared by a thousand of them.
    sockets, scratch = tmp_path / "sockets", tmp_path / "tmp"
    sockets.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("EXMACHINA_SOCKET_DIR", str(sockets))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    me = psutil.Process()
    threads, files, connections = me.num_threads(), me.open_files(), me.net_connections("unix")
    rehearse(samples=16)
    assert me.num_threads() == threads
    assert me.open_files() == files and me.net_connections("unix") == connections
    assert list(sockets.iterdir()) == [] and list(scratch.iterdir()) == []
