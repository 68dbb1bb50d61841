"""tcp links under CURVE: the run still equals the reference, strangers get nothing in, keys stay private."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import zmq

from exmachina.config import config_from_dict
from exmachina.data import datasets
from exmachina.launch.learn import child_specs
from exmachina.model import parameters, topology
from exmachina.model.parameters import Parameters
from exmachina.model.topology import COORDINATOR
from exmachina.network import curve, wire
from exmachina.rundir import checkpoints
from exmachina.rundir.directory import Site
from exmachina.rundir.logs import close_log, open_log
from exmachina.tools import logview
from tests.helpers import (
    assert_same_parameters,
    reference_after,
    run_dir,
    run_learn,
    start_learn,
    training_underway,
    wait_for,
    write_config,
)
from tests.helpers import xor_config as make

KEY, BOUND = re.compile(r"CURVE server with public key (\S{40});"), re.compile(r"bound inbox=(tcp://\S+);")


def tcp_xor(tmp_path, epochs: int, **runtime):
    config = make(training={"learning_rate": 0.5, "epochs": epochs}, runtime={"transport": "tcp", **runtime})
    return write_config(tmp_path, config)


@pytest.mark.timeout(120)
def test_xor_over_tcp_with_curve_equals_the_reference(tmp_path, no_leftovers):
    path = tcp_xor(tmp_path, epochs=100)
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    run = run_dir(tmp_path)
    reference, config = reference_after(path)
    trained = Parameters.load(run / "model.npz")
    assert_same_parameters(trained, reference.p)
    initial = parameters.initial(config)  # and the weights really moved
    assert max(np.abs(a - b).max() for a, b in zip(trained.axons, initial.axons)) > 1e-3
    logs = {p.stem: p.read_text() for p in (run / "neurons").glob("*.log")}
    for process_id in [*(f"input.{i}" for i in range(2)), "hidden1.1", "output.0", COORDINATOR]:
        assert "curve: inbox is a CURVE server" in logs[process_id], logs[process_id]
    assert re.search(r"bound inbox=tcp://127\.0\.0\.1:\d+", logs["hidden1.1"])
    assert not any("refused" in text for text in logs.values()), "the run's own links must all get in"


@pytest.mark.timeout(150)
def test_strangers_on_a_live_neurons_tcp_inbox_get_nothing_in(tmp_path, no_leftovers):
    path = tcp_xor(tmp_path, epochs=600)
    proc = start_learn(path)
    try:
        training_underway(tmp_path)
        run = run_dir(tmp_path)
        log = run / "neurons" / "hidden1.1.log"
        endpoint = wait_for(lambda: BOUND.search(log.read_text())).group(1)  # its log says where ...
        server_key = KEY.search(log.read_text()).group(1)  # ... and who it is: public keys are public
        sample, one, big = 10**6, wire.payload(np.array([0.5])), wire.payload(np.array([1e6]))
        forged = [  # admitted, these would fire the neuron, move its weights by a forged error, stop it
            wire.encode(wire.FORWARD, sample, 0, one),
            wire.encode(wire.FORWARD, sample, 1, one),
            wire.encode(wire.BACKWARD, sample, 0, big),
            wire.encode(wire.DROP, 1),
            wire.encode(wire.STOP),
        ] * 20
        ctx = zmq.Context()
        try:
            stranger = ctx.socket(zmq.PUSH)  # a CURVE client with a key of its own: not one of the run's
            curve.client(stranger, curve.Keypair(*zmq.curve_keypair()), server_key.encode())
            plain = ctx.socket(zmq.PUSH)  # no CURVE at all
            for sock in (stranger, plain):
                sock.connect(endpoint)
                for frame in forged:
                    sock.send(frame)
            wait_for(lambda: log.read_text().count("refused a connection") >= 2, timeout=30)
        finally:
            ctx.destroy(linger=0)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    text = log.read_text()
    refusals = [line for line in text.splitlines() if "refused a connection" in line]
    assert len(refusals) == 2, "one line per refused peer, not per message: " + "\n".join(refusals)
    assert any("not a key of this run" in line for line in refusals), refusals
    assert any("handshake failed" in line or "not a CURVE client" in line for line in refusals), refusals
    assert "stop requested" not in text and "dropped message" not in text and "dropped sample" not in text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["restarts"] == 0, summary
    reference, _ = reference_after(path)
    assert_same_parameters(Parameters.load(run / "model.npz"), reference.p)


@pytest.mark.timeout(150)
def test_a_killed_neuron_comes_back_with_its_key_and_is_let_back_in(tmp_path, no_leftovers):
    proc = start_learn(tcp_xor(tmp_path, epochs=1000, checkpoint_every=20))
    try:
        training_underway(tmp_path)
        run = run_dir(tmp_path)
        log = run / "neurons" / "hidden1.2.log"
        key = wait_for(lambda: KEY.search(log.read_text())).group(1)
        wait_for(lambda: checkpoints.counts(run, "hidden1.2")[-1] > 0, timeout=60)  # something to restore
        os.kill(int(re.search(r"start pid=(\d+)", log.read_text()).group(1)), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["restarts"] == 1 and summary["accuracy"] == 1.0
    text = log.read_text()
    assert "restarted: restored checkpoint" in text
    assert KEY.findall(text) == [key, key], "a restarted neuron keeps its key, so its peers still trust it"
    assert not any("refused" in p.read_text() for p in (run / "neurons").glob("*.log"))


def test_each_process_is_handed_its_own_secret_and_no_other(tmp_path):
    config = config_from_dict(make(runtime={"transport": "tcp"}))
    assert config.uses_curve
    specs = topology.neurons(config, parameters.initial(config))
    keys = curve.generate([s.id for s in specs] + [COORDINATOR])
    assert len({k.public for k in keys.values()}) == len(keys) == len(specs) + 1
    for pair in keys.values():
        assert zmq.curve_public(pair.secret) == pair.public
        assert pair.secret.decode() not in repr(pair)  # a logged spec never shows it
    site = Site(
        "tcp",
        "127.0.0.1",
        "tcp://127.0.0.1:1",
        str(tmp_path),
        "info",
        1000,
        1,
        1.0,
        0,
        curve.public_keys(keys),
    )
    children = child_specs(config, site, specs, (datasets.load(config), None), None, keys)
    assert [c.id for c in children] == [s.id for s in specs] + [COORDINATOR]
    for child in children:
        handed = pickle.dumps((child.args, child.kwargs))  # what the zygote passes the process
        for owner, pair in keys.items():
            assert (pair.secret in handed) == (owner == child.id), f"{child.id} holds {owner}'s secret"
            assert pair.public in handed  # every public key is common knowledge
    assert not any(pair.secret in pickle.dumps(site) for pair in keys.values())
    # without CURVE nobody gets keys at all
    plain = config_from_dict(make())
    assert not plain.uses_curve
    for child in child_specs(plain, site, specs, (datasets.load(plain), None), None, None):
        assert not any(isinstance(arg, curve.Keypair) for arg in child.args)


def test_curve_setting_resolves_and_reads_yaml_on_off():
    def mode(**runtime):
        return config_from_dict(make(runtime=runtime)).uses_curve

    assert not mode() and mode(transport="tcp") and mode(transport="ipc", curve="on")
    assert not mode(transport="tcp", curve="off") and not mode(transport="tcp", curve=False)
    assert mode(transport="ipc", curve=True)  # what YAML 1.1 makes of a bare `curve: on`


def test_a_bad_curve_setting_is_one_line_and_exit_2(tmp_path):
    result = run_learn(write_config(tmp_path, make(runtime={"curve": "maybe"})), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "runtime.curve: must be one of auto, on, off" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


@contextlib.contextmanager
def guarded_inbox(folder: Path, admitted: dict[str, curve.Keypair], run_keys: dict[str, curve.Keypair]):
    """A CURVE PULL on a free tcp port with its gatekeeper, in this process; yields (connect, gate,
    inbox, lines), connect(keys) being a PUSH client of it and lines, once the block is left, the
    messages of the gatekeeper's log."""
    me = curve.Keypair(*zmq.curve_keypair())
    path = folder / "gatekeeper.log"
    log = open_log("gatekeeper", path, "info", 1_000_000, 1)
    lines: list[str] = []
    ctx = zmq.Context()
    try:
        gate = curve.Gatekeeper(ctx, curve.public_keys(admitted), log, curve.public_keys(run_keys))
        inbox = ctx.socket(zmq.PULL)
        inbox.setsockopt(zmq.RCVTIMEO, 5000)
        curve.serve(inbox, me)
        inbox.bind("tcp://127.0.0.1:*")
        gate.start(inbox)

        def connect(pair: curve.Keypair) -> zmq.Socket:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            curve.client(sock, pair, me.public)
            sock.connect(inbox.getsockopt_string(zmq.LAST_ENDPOINT))
            return sock

        yield connect, gate, inbox, lines
        gate.stop()
        assert not gate._thread.is_alive()
    finally:
        ctx.destroy(linger=0)
        close_log(log)
    lines += [r.message for r in logview.records(path.read_bytes().splitlines(keepends=True), "gatekeeper")]


@pytest.mark.timeout(30)
def test_the_gatekeeper_admits_its_peers_and_refuses_the_rest_once_each(tmp_path):
    keys = curve.generate(["peer", "other"])
    stranger = curve.Keypair(*zmq.curve_keypair())
    with guarded_inbox(tmp_path, {"peer": keys["peer"]}, keys) as (connect, gate, inbox, lines):
        senders = [keys["other"], stranger, stranger, keys["peer"]]  # the stranger tries twice
        links = [connect(pair) for pair in senders]
        for sock, pair in zip(links, senders):
            sock.send(b"from " + pair.public)
        assert inbox.recv() == b"from " + keys["peer"].public
        wait_for(lambda: gate.refused >= 3)
    refusals = [x for x in lines if x.startswith("refused a connection")]
    assert len(refusals) == 2, refusals
    assert any("key of other, which is not wired to this process" in x for x in refusals), refusals
    assert any(stranger.public.decode() in x and "not a key of this run" in x for x in refusals)
    assert gate.refused == 3 and "refused 3 connection attempts in all" in lines[-1]


@pytest.mark.timeout(30)
def test_a_flood_of_strangers_is_counted_not_logged(tmp_path, monkeypatch):
    monkeypatch.setattr(curve, "LOGGED_REFUSALS", 2)
    with guarded_inbox(tmp_path, {}, {}) as (connect, gate, _, lines):
        links = [connect(curve.Keypair(*zmq.curve_keypair())) for _ in range(6)]
        for sock in links:
            sock.send(b"let me in")
        wait_for(lambda: gate.refused >= 6)
    refusals = [x for x in lines if x.startswith("refused")]
    assert len(refusals) == 4 and all(x.startswith("refused a connection") for x in refusals[:2])
    assert refusals[2:] == [
        "refused more than 2 peers: the rest are counted, not logged",
        "refused 6 connection attempts in all",
    ]
    assert len(gate._seen) == 2, "only the peers logged are remembered"
