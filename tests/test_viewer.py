"""`exmachina view` and `exmachina report` on a real run: a Semeion subset trained by the process network,
the page loaded in a real headless Chromium."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from exmachina.config import load_config
from exmachina.data import SEMEION_DATA, datasets
from exmachina.model.activations import LOSSES, accuracy
from exmachina.model.parameters import Parameters
from exmachina.model.reference import Reference
from exmachina.rundir.directory import RunDir, write_json
from exmachina.tools import report, viewer
from exmachina.tools.viewer import make_server, picture_shape, state
from tests.helpers import run_learn, wait_for, write_config

HIDDEN, PIXELS, CLASSES = 8, 256, 10
PER_DIGIT = 3  # 30 rows: three of each digit (the file is sorted by digit: its first 30 rows are 0s and 1s)
INSTALL_TIMEOUT_S = 400
BROWSER_TIMEOUT_S = 60
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# -- the run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def semeion(tmp_path_factory) -> tuple[RunDir, Path]:
    """One run of 256-8-10 on 30 Semeion digits (6 held out), 1 epoch, a snapshot every 5 samples:
    275 processes, trained to completion before the first test; nothing is left running."""
    directory = tmp_path_factory.mktemp("semeion")
    lines = [line for line in SEMEION_DATA.read_text().splitlines() if line.strip()]
    labels = [int(np.argmax([float(v) for v in line.split()[PIXELS:]])) for line in lines]
    rows = sorted(
        i for digit in range(CLASSES) for i in [r for r, y in enumerate(labels) if y == digit][:PER_DIGIT]
    )
    (directory / "semeion-subset.data").write_text("\n".join(lines[r] for r in rows) + "\n")
    config = write_config(
        directory,
        {
            "name": "semeion_view",
            "seed": 1,
            "network": {
                "layers": [
                    {"name": "input", "size": PIXELS, "activation": "identity"},
                    {"name": "hidden", "size": HIDDEN, "activation": "logistic"},
                    {"name": "output", "size": CLASSES, "activation": "logistic"},
                ]
            },
            "training": {"loss": "squared_error", "learning_rate": 1.0, "epochs": 1},
            "data": {"source": "semeion", "path": str(directory / "semeion-subset.data"), "holdout": 0.2},
            "runtime": {"snapshot_every": 5, "log_level": "warning"},
        },
    )
    sockets = tmp_path_factory.mktemp("sock")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXMACHINA_SOCKET_DIR", str(sockets))
        result = run_learn(config, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in sockets.rglob("*") if p.is_socket()], "socket files left behind"
    return RunDir((directory / "runs" / "latest").resolve()), config


@pytest.fixture
def run(semeion) -> RunDir:
    return semeion[0]


@pytest.fixture
def scratch_run(run, tmp_path) -> RunDir:
    """A copy of the run (timestamps kept) that a test may overwrite."""
    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("neurons", "checkpoints"))
    return RunDir(copy)


@contextlib.contextmanager
def serving(run: RunDir):
    """The viewer's server on a free port, in a thread; shut down and joined on the way out."""
    threads_before = set(threading.enumerate())
    server = make_server(run, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        # the request threads end when their client closes the connection
        wait_for(lambda: not (set(threading.enumerate()) - threads_before), timeout=10)


def get(server, path: str) -> bytes:
    with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=10) as response:
        assert response.status == 200
        return response.read()


# -- the API and the model file ------------------------------------------------------------------


def test_the_api_serves_the_neurons_own_weights(run):
    model = Parameters.load(run.model)
    summary = json.loads(run.summary.read_text())
    with serving(run) as server:
        s = json.loads(get(server, "/api/state"))
        page = get(server, "/").decode()
    assert "<canvas" in page and "/api/state" in page
    assert not re.search(r"(src|href)=\"?(https?:)?//", page), "the page must load nothing from the network"
    assert s["status"] == "completed" and s["source"] == "model.npz"
    assert s["samples"] == summary["samples"] == 24
    [hidden] = s["pictures"]
    assert hidden["layer"] == "hidden" and hidden["shape"] == [16, 16] and hidden["inputs"] == PIXELS
    assert [n["id"] for n in hidden["neurons"]] == [f"hidden.{j}" for j in range(HIDDEN)]
    for j, neuron in enumerate(hidden["neurons"]):
        assert len(neuron["weights"]) == PIXELS
        assert neuron["weights"] == model.axons[0][:, j].tolist()  # exactly: JSON floats round-trip
        assert neuron["bias"] == model.biases[1][j]
    assert s["matrix"]["weights"] == model.axons[1].tolist()  # (8, 10): hidden -> output
    # the snapshot taken at the end of the epoch holds the same weights: nothing learned after it
    snapshot = Parameters.load(run.snapshot)
    assert all(np.array_equal(a, b) for a, b in zip(snapshot.axons, model.axons))
    predictions = json.loads(run.predictions.read_text())["recent"]
    assert len(s["predictions"]) == len(predictions) == 20
    assert [p["predicted"] for p in s["predictions"]] == [p["predicted"] for p in predictions]
    assert all(p["shape"] == [16, 16] and len(p["input"]) == PIXELS for p in s["predictions"])
    [epoch] = s["metrics"]
    assert epoch["epoch"] == 1 and epoch["holdout_accuracy"] == summary["holdout_accuracy"]


def test_the_model_file_predicts_the_held_out_rows_as_the_process_network_did(semeion):
    run, config_path = semeion
    config = load_config(config_path)
    _, holdout = datasets.split(datasets.load(config), config.data.holdout, config.seed)
    assert len(holdout) == 6
    reference = Reference(Parameters.load(run.model), config.training.loss, config.training.learning_rate)
    outputs = reference.predict(holdout.inputs)
    summary = json.loads(run.summary.read_text())
    assert accuracy(outputs, holdout.targets) == summary["holdout_accuracy"]
    loss = LOSSES[config.training.loss]
    mean_loss = np.mean([loss.value(o, y) for o, y in zip(outputs, holdout.targets)])
    assert mean_loss == pytest.approx(summary["holdout_loss"], abs=1e-9)


# -- the report ----------------------------------------------------------------------------------


def test_report_writes_the_pictures_as_png_files(scratch_run):
    result = subprocess.run(
        [sys.executable, "-m", "exmachina", "report", str(scratch_run.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    names = {
        "report-weights-hidden.png",
        "report-hidden-output.png",
        "report-predictions.png",
        "report-curves.png",
    }
    printed = [Path(line) for line in result.stdout.split()]
    assert {p.name for p in printed} == names
    import matplotlib.image

    for path in printed:
        assert path.parent == scratch_run.path.resolve()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000, path
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400, (path, pixels.shape)
        assert pixels[..., :3].std() > 0.05, f"{path} is nearly blank"


# -- the page in a real browser ------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> str:
    """Debian's chromium, installed if missing (root only); skips when it cannot be had or run."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed and cannot be here (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        try:
            done = subprocess.run(install, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
            if done.returncode != 0:  # stale package lists: refresh once and try again
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=120, env=env)
                done = subprocess.run(
                    install, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env
                )
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing chromium took over {INSTALL_TIMEOUT_S} s")
        found = shutil.which("chromium")
        if done.returncode != 0 or found is None:
            pytest.skip(f"apt-get install chromium failed: {done.stderr.strip()[-300:]}")
    probe = browse(found, tmp_path_factory.mktemp("probe"), "--dump-dom", "data:text/html,<p id=ok>ok</p>")
    if probe.returncode != 0 or 'id="ok"' not in probe.stdout:
        pytest.skip(f"chromium does not run headless here: {probe.stderr.strip()[-300:]}")
    return found


def browse(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run in its own process group, all of which is gone when it returns."""
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers (zygote, crashpad) go with it
        proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


class Dom(HTMLParser):
    """The markers the page puts in the DOM for machines: neuron canvases, predictions, data-samples."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.neurons: list[str] = []
        self.predictions: list[dict] = []
        self.body: dict = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if "neuron" in classes:
            self.neurons.append(a.get("data-neuron"))
        if "prediction" in classes:
            self.predictions.append({**a, "right": "right" in classes})


def dump_dom(chromium: str, profile: Path, url: str) -> Dom:
    result = browse(chromium, profile, "--virtual-time-budget=5000", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    return Dom(result.stdout)


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 180)
def test_the_page_draws_every_hidden_neuron_and_the_predictions(chromium, scratch_run, tmp_path):
    with serving(scratch_run) as server:
        dom = dump_dom(chromium, tmp_path / "profile", server.url)
        shot = tmp_path / "viewer.png"
        result = browse(
            chromium,
            tmp_path / "profile",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            "--window-size=1280,1000",
            server.url,
        )
    assert dom.neurons == [f"hidden.{j}" for j in range(HIDDEN)]
    predictions = json.loads(scratch_run.predictions.read_text())["recent"]
    assert len(dom.predictions) == len(predictions) == 20
    newest = predictions[-1]  # drawn first
    assert dom.predictions[0]["data-predicted"] == str(newest["predicted"])
    assert dom.predictions[0]["right"] == (newest["predicted"] == newest["target"])
    assert dom.body["data-samples"] == "24"
    assert dom.body["data-status"] == "completed" and dom.body["data-source"] == "model.npz"
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    print(f"\nviewer screenshot: {shot}")


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 180)
def test_the_page_follows_the_weights_the_run_writes(chromium, scratch_run, tmp_path):
    with serving(scratch_run) as server:
        before = dump_dom(chromium, tmp_path / "profile", server.url)
        # the run goes on: the neurons report new weights, and newer predictions follow them
        params = Parameters.load(scratch_run.model)
        params.axons[0] = -params.axons[0]
        params.save(scratch_run.snapshot)
        predictions = json.loads(scratch_run.predictions.read_text())
        recent = [{**p, "predicted": (p["predicted"] + 1) % CLASSES} for p in predictions["recent"][-7:]]
        write_json(scratch_run.predictions, {**predictions, "samples": 29, "epoch": 2, "recent": recent})
        after = dump_dom(chromium, tmp_path / "profile", server.url)
        s = json.loads(get(server, "/api/state"))
    assert before.body["data-samples"] == "24" and before.body["data-source"] == "model.npz"
    assert after.body["data-samples"] == "29" and after.body["data-source"] == "snapshot.npz"
    assert len(before.predictions) == 20 and len(after.predictions) == 7
    assert after.predictions[0]["data-predicted"] == str(recent[-1]["predicted"])
    assert after.neurons == before.neurons
    assert s["pictures"][0]["neurons"][3]["weights"] == params.axons[0][:, 3].tolist()


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 180)
def test_an_open_page_redraws_on_its_next_poll(chromium, scratch_run, tmp_path, monkeypatch):
    """One page load: the run writes new files between two of the page's polls, and the same page,
    never reloaded, shows them."""
    real_state, polls = viewer.state, []

    def state_then_train_on(run: RunDir) -> dict:
        polls.append(time.monotonic())
        if len(polls) == 2:  # the page has drawn once; now the run moves on
            params = Parameters.load(run.model)
            params.axons[0] = params.axons[0] * 0.5
            params.save(run.snapshot)
            predictions = json.loads(run.predictions.read_text())
            write_json(run.predictions, {**predictions, "samples": 31, "epoch": 2})
        return real_state(run)

    monkeypatch.setattr(viewer, "state", state_then_train_on)
    with serving(scratch_run) as server:
        dom = dump_dom(chromium, tmp_path / "profile", server.url)
    assert len(polls) >= 3, "the page polls /api/state about once a second"
    assert dom.body["data-samples"] == "31" and dom.body["data-source"] == "snapshot.npz"
    assert len(dom.neurons) == HIDDEN and len(dom.predictions) == 20, "redrawn in place, nothing doubled"


# -- the command line ----------------------------------------------------------------------------


def test_view_prints_its_url_serves_and_stops_on_ctrl_c(run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "exmachina", "view", str(run.path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0) + "api/state", timeout=10) as response:
            assert len(json.loads(response.read())["pictures"][0]["neurons"]) == HIDDEN
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_view_and_report_refuse_a_missing_run(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert viewer.main(missing, "127.0.0.1", 0) == 2
    assert report.main(missing) == 2
    assert capsys.readouterr().err.count("no run directory") == 2


# -- reading a run defensively, without processes ------------------------------------------------


def tiny(sizes=(9, 3, 2), value: float = 0.5) -> Parameters:
    return Parameters(
        [np.full((a, b), value) for a, b in itertools.pairwise(sizes)],
        [np.zeros(s) for s in sizes],
        ["identity"] + ["logistic"] * (len(sizes) - 1),
        [True] * len(sizes),
        [f"l{i}" for i in range(len(sizes))],
    )


def test_picture_shape():
    assert picture_shape(256) == (16, 16)
    assert picture_shape(9) == (3, 3)
    assert picture_shape(10) is None
    assert picture_shape(1) is None


def test_state_of_a_run_that_has_written_nothing_yet(tmp_path):
    s = state(RunDir(tmp_path))
    assert s["pictures"] == [] and s["predictions"] == [] and s["metrics"] == [] and s["source"] is None
    json.dumps(s, allow_nan=False)


def test_state_reads_broken_and_half_written_files_defensively(tmp_path):
    run = RunDir(tmp_path)
    tiny(value=0.25).save(run.model)
    run.snapshot.write_bytes(b"PK\x03\x04 not a zip")  # newer, but unreadable: the model is shown
    run.predictions.write_text('{"samples": 3, "rec')
    run.metrics.write_text(
        json.dumps({"event": "epoch", "epoch": 1, "loss": float("nan"), "accuracy": 0.5})
        + "\n"
        + json.dumps({"event": "restart", "neuron": "l1.0"})
        + '\n{"event": "epo'
    )
    s = state(run)
    assert s["source"] == "model.npz"
    assert s["pictures"][0]["shape"] == [3, 3] and s["pictures"][0]["neurons"][0]["weights"] == [0.25] * 9
    assert s["predictions"] == [] and s["samples"] is None
    assert s["metrics"] == [{"epoch": 1, "loss": None, "accuracy": 0.5}]
    json.dumps(s, allow_nan=False)


def test_state_draws_every_hidden_layer_and_survives_diverged_weights(tmp_path):
    run = RunDir(tmp_path)
    params = tiny((16, 5, 4, 3))
    params.axons[0][2, 1] = float("inf")
    params.save(run.snapshot)
    s = state(run)
    assert [(p["layer"], p["shape"]) for p in s["pictures"]] == [("l1", [4, 4]), ("l2", None)]
    assert s["pictures"][0]["neurons"][1]["weights"][2] is None
    assert np.array(s["matrix"]["weights"]).shape == (4, 3)
    json.dumps(s, allow_nan=False)
    time.sleep(0.01)
    tiny((16, 3)).save(run.model)  # newer: a network without a hidden layer draws its outputs
    assert [p["layer"] for p in state(run)["pictures"]] == ["l1"] and state(run)["matrix"] is None
