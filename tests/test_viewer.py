"""`exmachina view` and `exmachina report` on real runs: a Semeion subset (pictures) and XOR (values)
trained by the process network, the page loaded in a real headless Chromium."""

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
from exmachina.tools.viewer import (
    CURVE_COLOURS,
    PAGE,
    WEIGHT_COLOURS,
    make_server,
    number,
    picture_shape,
    prediction_text,
    state,
)
from tests.helpers import run_learn, wait_for, write_config, xor_config

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


def learn_cleanly(tmp_path_factory, config: Path) -> None:
    """Train from ``config`` with a socket folder of its own, and prove no socket file is left in it."""
    sockets = tmp_path_factory.mktemp("sock")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXMACHINA_SOCKET_DIR", str(sockets))
        result = run_learn(config, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in sockets.rglob("*") if p.is_socket()], "socket files left behind"


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
    learn_cleanly(tmp_path_factory, config)
    return RunDir((directory / "runs" / "latest").resolve()), config


@pytest.fixture(scope="module")
def xor(tmp_path_factory) -> RunDir:
    """One XOR run of 2-3-1 for 60 epochs: inputs that are two values, not a picture."""
    directory = tmp_path_factory.mktemp("xor")
    config = write_config(
        directory, xor_config(training={"epochs": 60}, runtime={"log_level": "warning", "snapshot_every": 10})
    )
    learn_cleanly(tmp_path_factory, config)
    return RunDir((directory / "runs" / "latest").resolve())


@pytest.fixture
def run(semeion) -> RunDir:
    return semeion[0]


def copy_run(run: RunDir, directory: Path) -> RunDir:
    """A copy of the run (timestamps kept) that a test may overwrite."""
    copy = directory / run.path.name
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("neurons", "checkpoints"))
    return RunDir(copy)


@pytest.fixture
def scratch_run(run, tmp_path) -> RunDir:
    return copy_run(run, tmp_path)


@pytest.fixture
def scratch_xor(xor, tmp_path) -> RunDir:
    return copy_run(xor, tmp_path)


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


def test_an_xor_runs_state_carries_values_not_pictures(xor):
    model = Parameters.load(xor.model)
    with serving(xor) as server:
        s = json.loads(get(server, "/api/state"))
    [hidden] = s["pictures"]
    assert hidden["inputs"] == 2 and hidden["shape"] is None and hidden["drawn"] == "bars"
    for j, neuron in enumerate(hidden["neurons"]):
        assert neuron["weights"] == model.axons[0][:, j].tolist()
    recent = json.loads(xor.predictions.read_text())["recent"]
    assert len(s["predictions"]) == len(recent) > 0
    for p, raw in zip(s["predictions"], recent):
        assert p["shape"] is None and p["input"] == raw["input"]
        a, b = (int(v) for v in raw["input"])
        assert p["text"] == f"{a}, {b} -> {raw['output'][0]:.2f} (target {raw['target']})"


@pytest.mark.unit
def test_the_page_draws_values_when_the_state_has_no_shape():
    script = PAGE.split("<script>")[1]
    assert "function drawBars(" in script and "function drawValues(" in script
    assert re.search(
        r"if \(layer\.shape\) \{.*\} else \{\s*canvas\.className = \"neuron bars\";", script, re.S
    )
    assert "if (p.shape) drawDigit(fig, p); else drawValues(fig, p);" in script
    assert f"const WEIGHT_COLOURS = {json.dumps(WEIGHT_COLOURS)};" in script


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


def test_report_draws_an_xor_runs_weights_as_bars_and_its_inputs_as_numbers(scratch_xor):
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer
    from matplotlib.image import AxesImage

    assert report.main(str(scratch_xor.path), out=lambda line: None) == 0
    for name in ("weights-hidden1", "hidden-output", "predictions", "curves"):
        assert (scratch_xor.path / f"report-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = state(scratch_xor)
    fig = report.weights_figure(s["pictures"][0])
    assert not fig.findobj(AxesImage), "two inputs are no picture"
    drawn = [c for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer)]
    assert len(drawn) == 3  # one bar chart per hidden neuron
    for bars, neuron in zip(drawn, s["pictures"][0]["neurons"]):
        assert [b.get_height() for b in bars] == neuron["weights"]
        sign = ["negative" if w < 0 else "positive" for w in neuron["weights"]]
        assert [to_hex(b.get_facecolor()) for b in bars] == [WEIGHT_COLOURS[k] for k in sign]
    fig = report.predictions_figure(s["predictions"], s["samples"])
    assert not fig.findobj(AxesImage)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {p["text"] for p in s["predictions"]} <= texts


@pytest.mark.unit
def test_report_curves_have_the_pages_colours():
    from matplotlib.colors import to_hex

    keys = ("loss", "holdout_loss", "accuracy", "recent_accuracy", "holdout_accuracy")
    metrics = [{"epoch": e, **{k: 0.1 * e for k in keys}} for e in (1, 2, 3)]
    lines = [line for ax in report.curves_figure(metrics).axes for line in ax.lines]
    assert [line.get_label() for line in lines] == ["train", "held out", "train", "last 200", "held out"]
    assert all(to_hex(line.get_color()) == CURVE_COLOURS[line.get_label()] for line in lines)
    script = PAGE.split("<script>")[1]
    assert f"const CURVE_COLOURS = {json.dumps(CURVE_COLOURS)};" in script
    curves = script[script.index("function drawCurves") :].split("\n}\n")[0]
    assert not re.search(r"#[0-9a-f]{6}", curves, re.I), "the page's curves take CURVE_COLOURS only"


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
        self.canvases: dict[str, dict] = {}  # a neuron's canvas attributes, by neuron
        self.values: dict[str, str] = {}  # the numbers printed under a neuron's bars
        self.predictions: list[dict] = []
        self.charts: dict[str, dict] = {}
        self.body: dict = {}
        self._owner: dict | None = None  # where the text of a `values` element goes
        self._text: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if "neuron" in classes:
            self.neurons.append(a.get("data-neuron"))
            self.canvases[a.get("data-neuron")] = a
            self._owner = {"neuron": a.get("data-neuron")}
        if "prediction" in classes:
            self.predictions.append({**a, "right": "right" in classes})
            self._owner = self.predictions[-1]
        if tag == "canvas" and "id" in a:
            self.charts[a["id"]] = a
        if "values" in classes:
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if self._text is None or self._owner is None:
            return
        if "neuron" in self._owner:
            self.values[self._owner["neuron"]] = self._text
        else:
            self._owner["text"] = self._text
        self._text = None


def dump_dom(chromium: str, profile: Path, url: str) -> Dom:
    """The page's DOM once it has drawn; a script error anywhere fails the test."""
    result = browse(
        chromium, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", url
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Uncaught" not in result.stderr, result.stderr[-2000:]
    dom = Dom(result.stdout)
    assert dom.body["data-error"] == "", dom.body["data-error"]
    return dom


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
    assert {dom.canvases[n]["data-drawn"] for n in dom.neurons} == {"picture"}
    assert all(p["data-drawn"] == "picture" for p in dom.predictions)
    curves = ";".join(f"{name}={colour}" for name, colour in CURVE_COLOURS.items())
    assert dom.charts["accuracy-chart"]["data-curves"] == curves  # train, last 200, held out
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    print(f"\nviewer screenshot: {shot}")


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 180)
def test_the_page_draws_an_xor_runs_weights_as_bars_and_its_inputs_as_numbers(
    chromium, scratch_xor, tmp_path
):
    with serving(scratch_xor) as server:
        dom = dump_dom(chromium, tmp_path / "profile", server.url)
        s = json.loads(get(server, "/api/state"))
    neurons = s["pictures"][0]["neurons"]
    assert dom.neurons == [n["id"] for n in neurons] == ["hidden1.0", "hidden1.1", "hidden1.2"]
    for n in neurons:
        assert dom.canvases[n["id"]]["data-drawn"] == "bars"
        assert dom.canvases[n["id"]]["data-bars"] == "2"
        assert dom.values[n["id"]] == ", ".join(f"{w:.2f}" for w in n["weights"])
    assert len(dom.predictions) == len(s["predictions"]) > 0
    for shown, p in zip(dom.predictions, reversed(s["predictions"])):  # newest first
        assert shown["data-drawn"] == "values" and shown["text"] == p["text"]
        assert re.fullmatch(r"[01], [01] -> \d\.\d\d \(target [01]\)", shown["text"])
    assert dom.charts["loss-chart"]["data-curves"] == f"train={CURVE_COLOURS['train']}"


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


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_view_refuses_a_port_out_of_range_in_one_line(tmp_path, port):
    (tmp_path / "run").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "exmachina", "view", str(tmp_path / "run"), "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"exmachina: --port must be 0 to 65535 (0: any free port), got {port}\n"


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
    assert picture_shape(16) == (4, 4)
    assert picture_shape(9) is None  # a few values (a table's columns) are bars, not a 3x3 picture
    assert picture_shape(4) is None
    assert picture_shape(10) is None
    assert picture_shape(1) is None


@pytest.mark.unit
def test_values_are_printed_as_numbers():
    assert [number(v) for v in (0.0, 1, 0.9712, -1.5, None, float("nan"))] == [
        "0",
        "1",
        "0.97",
        "-1.50",
        "-",
        "-",
    ]
    assert prediction_text([0.0, 1.0], [0.9712], 1, 1) == "0, 1 -> 0.97 (target 1)"
    assert prediction_text([0.5, 2.0, 3.25], [0.1, 0.8], 1, 0) == "0.50, 2, 3.25 -> class 1 (target 0)"
    assert (
        prediction_text([1.0] * 20, [0.2], 0, 0)
        == ", ".join(["1"] * 16) + ", ... (20 in all) -> 0.20 (target 0)"
    )


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
    assert s["pictures"][0]["shape"] is None and s["pictures"][0]["neurons"][0]["weights"] == [0.25] * 9
    assert s["predictions"] == [] and s["samples"] is None
    assert s["metrics"] == [{"epoch": 1, "loss": None, "accuracy": 0.5}]
    json.dumps(s, allow_nan=False)


def test_state_draws_every_hidden_layer_and_survives_diverged_weights(tmp_path):
    run = RunDir(tmp_path)
    params = tiny((16, 5, 4, 3))
    params.axons[0][2, 1] = float("inf")
    params.save(run.snapshot)
    s = state(run)
    assert [(p["layer"], p["shape"], p["drawn"]) for p in s["pictures"]] == [
        ("l1", [4, 4], "picture"),
        ("l2", None, "bars"),
    ]
    assert s["pictures"][0]["neurons"][1]["weights"][2] is None
    assert np.array(s["matrix"]["weights"]).shape == (4, 3)
    json.dumps(s, allow_nan=False)
    time.sleep(0.01)
    tiny((16, 3)).save(run.model)  # newer: a network without a hidden layer draws its outputs
    assert [p["layer"] for p in state(run)["pictures"]] == ["l1"] and state(run)["matrix"] is None
