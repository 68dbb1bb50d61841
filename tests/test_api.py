"""The Python API and the commands that use a trained model, on real runs of a small XOR network."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

import exmachina
from exmachina.config import ConfigError, load_config
from exmachina.data import datasets
from exmachina.model.parameters import Parameters
from exmachina.model.reference import Reference
from tests.helpers import wait_for, write_config, xor_config

XOR_INPUTS = [[0, 0], [0, 1], [1, 0], [1, 1]]
XOR_TRUTH = [[0], [1], [1], [0]]
EPOCHS = 200  # enough for seed 3 at learning rate 1.0 to round to the truth table


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> exmachina.Run:
    """XOR learnt through exmachina.learn from a config file with relative runs_dir, in its own
    directory, one key overridden by dotted name and one section by dict."""
    home = tmp_path_factory.mktemp("trained")
    config = xor_config(training={"learning_rate": 0.5, "epochs": 7})
    (home / "xor.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sockets = tmp_path_factory.mktemp("sock-trained")
    # a forkserver or resource tracker that an earlier test module started outlives it by design
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("EXMACHINA_SOCKET_DIR", str(sockets))
        run = exmachina.learn("xor.yaml", **{"training.epochs": EPOCHS}, training={"learning_rate": 1.0})
    # the module's runs start before any test's no_leftovers looks: the check is here
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert not left, f"learn returned with processes still alive: {left}"
    return run


def exmachina_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exmachina", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_learn_applies_overrides_and_learns_xor(trained):
    assert trained.path.parent == trained.path.parent.resolve()
    assert trained.path.parent.name == "runs" and (trained.path.parent.parent / "xor.yaml").exists()
    assert trained.status == "completed"
    written = load_config(trained.path / "config.yaml")
    assert written.training.epochs == EPOCHS and written.training.learning_rate == 1.0
    assert [r["epoch"] for r in trained.metrics] == list(range(1, EPOCHS + 1))
    assert trained.summary["epochs"] == EPOCHS
    model = exmachina.load(trained.path)
    assert np.round(model.predict(XOR_INPUTS)).tolist() == XOR_TRUTH
    assert model.classify(XOR_INPUTS).tolist() == [0, 1, 1, 0]
    assert model.layer_sizes == [2, 3, 1] and model.activations == ["identity", "tanh", "logistic"]
    wrote = Parameters.load(trained.path / "model.npz")
    for got, want in zip(model.parameters.axons + model.parameters.biases, wrote.axons + wrote.biases):
        assert np.array_equal(got, want)


def test_evaluate_equals_what_the_process_network_measured(trained):
    # summary.json's final loss is the coordinator's pass of every row through the neuron processes
    scores = exmachina.load(trained.path).evaluate(datasets.builtin("xor"))
    assert scores["loss"] == pytest.approx(trained.summary["final_loss"], abs=1e-12)
    assert scores["accuracy"] == trained.summary["accuracy"] == 1.0
    assert exmachina.load(trained.path).evaluate((XOR_INPUTS, [0, 1, 1, 0])) == scores


def test_predict_equals_the_reference_forward_pass(trained):
    reference = Reference(Parameters.load(trained.path / "model.npz"), "squared_error", 0.0)
    rows = np.random.default_rng(0).uniform(-2, 2, size=(50, 2))
    want = reference.forward(rows.T)[1][-1].T
    for named in (trained.path, trained.path / "model.npz", str(trained.path.parent / "latest")):
        assert np.allclose(exmachina.load(named).predict(rows), want, rtol=0, atol=1e-12)


@pytest.fixture
def csvs(tmp_path):
    (tmp_path / "in.csv").write_text("".join(f"{a},{b}\n" for a, b in XOR_INPUTS))
    (tmp_path / "xy.csv").write_text(
        "# a, b, a xor b\n" + "".join(f"{a},{b},{a ^ b}\n" for a, b in XOR_INPUTS)
    )
    (tmp_path / "wide.csv").write_text("0,0,0,1\n")
    return tmp_path


def test_predict_command_prints_outputs_json_and_classes(trained, csvs):
    want = exmachina.load(trained.path).predict(XOR_INPUTS)
    plain = exmachina_command("predict", str(trained.path), "--data", str(csvs / "in.csv"))
    assert plain.returncode == 0, plain.stderr
    assert [[float(v) for v in line.split(",")] for line in plain.stdout.splitlines()] == want.tolist()
    assert plain.stderr == ""
    as_json = exmachina_command(
        "predict", str(trained.path / "model.npz"), "--data", str(csvs / "in.csv"), "--json"
    )
    assert json.loads(as_json.stdout) == want.tolist()
    classes = exmachina_command(
        "predict", "latest", "--data", str(csvs / "in.csv"), "--classes", cwd=trained.path.parent.parent
    )
    assert classes.returncode == 0, classes.stderr
    assert classes.stdout.split() == ["0", "1", "1", "0"]


def test_predict_command_scores_rows_with_targets_and_refuses_a_wrong_width(trained, csvs):
    scored = exmachina_command("predict", str(trained.path), "--data", str(csvs / "xy.csv"))
    assert scored.returncode == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == 4
    assert "accuracy 100.0%" in scored.stderr
    wrong = exmachina_command("predict", str(trained.path), "--data", str(csvs / "wide.csv"))
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert len(wrong.stderr.splitlines()) == 1
    assert "rows have 4 values, the model takes 2 inputs" in wrong.stderr
    missing = exmachina_command("predict", str(csvs / "no-such-run"), "--data", str(csvs / "in.csv"))
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1


def test_evaluate_command_on_a_file_and_on_the_runs_rows(trained, csvs):
    on_file = exmachina_command("evaluate", str(trained.path), "--data", str(csvs / "xy.csv"), "--json")
    assert on_file.returncode == 0, on_file.stderr
    scores = json.loads(on_file.stdout)
    assert scores["loss"] == pytest.approx(trained.summary["final_loss"], abs=1e-12)
    assert scores["accuracy"] == 1.0 and scores["rows"] == 4
    held = exmachina_command("evaluate", str(trained.path))
    assert held.returncode == 0, held.stderr
    assert "accuracy 100.0% on 4 training rows" in held.stdout
    no_targets = exmachina_command("evaluate", str(trained.path), "--data", str(csvs / "in.csv"))
    assert no_targets.returncode == 2 and "no targets" in no_targets.stderr


def test_evaluate_takes_the_rows_the_run_held_out(tmp_path, monkeypatch):
    # a csv source beside its config, in another directory than the caller's: data.path stays relative
    # to the config file, runs_dir to the current directory
    conf = tmp_path / "conf"
    conf.mkdir()
    rows = np.random.default_rng(1).uniform(0, 1, size=(12, 2))
    (conf / "rows.csv").write_text("".join(f"{a},{b},{float(a > b)}\n" for a, b in rows))
    config = xor_config(data={"source": "csv", "path": "rows.csv", "targets": 1, "holdout": 0.25})
    (conf / "c.yaml").write_text(yaml.safe_dump({**config, "training": {"learning_rate": 0.5, "epochs": 2}}))
    monkeypatch.chdir(tmp_path)
    run = exmachina.learn("conf/c.yaml")
    assert run.path.parent == tmp_path / "runs"
    model = run.model
    held = model.held_out()
    config = load_config(conf / "c.yaml")
    assert np.array_equal(held.inputs, datasets.split(datasets.load(config), 0.25, config.seed)[1].inputs)
    assert len(held) == 3
    out = exmachina_command("evaluate", str(run.path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {**model.evaluate(held), "rows": 3}
    assert run.summary["holdout_loss"] == pytest.approx(model.evaluate(held)["loss"], abs=1e-12)


def test_learn_command_takes_the_config_as_an_option_or_an_argument(tmp_path):
    path = write_config(tmp_path, xor_config(training={"learning_rate": 0.5, "epochs": 3}))
    as_option = exmachina_command("learn", "--config", str(path), cwd=tmp_path)
    assert as_option.returncode == 0, as_option.stderr
    assert "completed after 3 epochs" in as_option.stdout
    both = exmachina_command("learn", str(path), "--config", str(tmp_path / "other.yaml"), cwd=tmp_path)
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["learn", "logs", "ps", "predict", "evaluate"])
def test_help_shows_no_placeholder_after_a_flag(command):
    text = exmachina_command(command, "--help").stdout
    assert "--help" in text and "<bool>" not in text


def test_start_then_stop_ends_every_process_and_leaves_a_resumable_run(tmp_path):
    epochs = 500
    path = write_config(tmp_path, xor_config(training={"learning_rate": 0.5, "epochs": epochs}))
    training = exmachina.start(path)
    first = wait_for(training.progress, timeout=30)
    assert first["epoch"] >= 1 and training.running
    run = training.stop()
    assert not training.running
    assert run.status == "stopped" and run.summary["epochs"] < epochs
    assert Parameters.load(run.path / "model.npz").sizes == [2, 3, 1]
    resumed = exmachina.resume(run.path)
    assert resumed.path == run.path and resumed.status == "completed"
    assert [r["epoch"] for r in resumed.metrics] == list(range(1, epochs + 1))


def test_ctrl_c_in_learn_stops_the_run_then_raises(tmp_path):
    path = write_config(tmp_path, xor_config(training={"learning_rate": 0.5, "epochs": 100_000}))

    def interrupt_once_training() -> None:
        wait_for(lambda: any((tmp_path / "runs").glob("xor-*/metrics.jsonl")), timeout=30)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_training, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        exmachina.learn(path)
    interrupter.join()
    run = exmachina.Run(next((tmp_path / "runs").glob("xor-*")))
    assert run.status == "stopped"
    assert exmachina.load(run.path).layer_sizes == [2, 3, 1]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"training.epochz": 5}, "training.epochz"),
        ({"traning.epochs": 5}, "traning"),
        ({"training": {"epochs": "many"}}, "training.epochs"),
        ({"network.layers[1].size": 0}, "network.layers[1].size"),
        ({"seed.value": 1}, "seed.value"),
    ],
)
def test_a_bad_override_raises_config_error_naming_the_key_and_starts_nothing(tmp_path, overrides, key):
    path = write_config(tmp_path, xor_config())
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {key}:")):
        exmachina.learn(path, **overrides)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match=r"<memory>: training\.epochs"):
        exmachina.start(xor_config(training={"learning_rate": 0.5, "epochs": 0}))


def test_learn_in_a_terminal_shows_the_live_progress_bar(tmp_path):
    path = write_config(tmp_path, xor_config(training={"learning_rate": 0.5, "epochs": 3}))
    script = f"import exmachina; print('status', exmachina.learn({str(path)!r}).status)"
    terminal, ours = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=ours, stderr=subprocess.PIPE, cwd=tmp_path
        )
    finally:
        os.close(ours)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the last holder of the terminal's other end is gone
        while chunk := os.read(terminal, 65536):
            shown += chunk
    os.close(terminal)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    proc.stderr.close()
    text = shown.decode()
    assert "epoch 3/3" in text and "\u2501" in text  # rich's bar, drawn only on a terminal
    assert "status completed" in text
