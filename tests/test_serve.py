"""`exmachina serve`: a model served by real neuron processes over real HTTP, under fire."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from exmachina.config import config_from_dict
from exmachina.model.parameters import of_config
from exmachina.model.trained import Model, load
from exmachina.network import front
from exmachina.network.front import Refused, parse_rows
from exmachina.rundir.directory import RunDir
from tests.helpers import exmachina_processes, wait_for, xor_config

NEURONS = ["input.0", "input.1", "hidden1.0", "hidden1.1", "hidden1.2", "output.0"]
START_TIMEOUT_S = 90  # a shared two-core machine starts seven processes slowly


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory) -> tuple[Path, Model]:
    return known_run(tmp_path_factory.mktemp("served"))


def known_run(home: Path, **sections: dict) -> tuple[Path, Model]:
    """A run directory made by the real code, holding a 2-3-1 model with known weights."""
    runtime = {"log_level": "info", "runs_dir": str(home / "runs")}
    config = config_from_dict(xor_config(runtime=runtime, **sections))
    axons = [
        np.array([[1.5, -2.0, 0.7], [-1.1, 2.2, 0.4]]),
        np.array([[2.5], [-1.8], [0.9]]),
    ]
    biases = [np.zeros(2), np.array([0.1, -0.3, 0.2]), np.array([0.05])]
    run = RunDir.create(config)
    of_config(config, axons, biases).save(run.model)
    return run.path, load(run.path)


@dataclass
class Served:
    """A running `exmachina serve`: its process, its URL, its serve directory, what it printed."""

    proc: subprocess.Popen
    url: str
    directory: Path
    lines: list[str]

    @property
    def address(self) -> tuple[str, int]:
        host, port = re.match(r"http://([^:/]+):(\d+)/", self.url).groups()
        return host, int(port)

    def neuron_pids(self) -> dict[str, int]:
        """Neuron id -> pid of the neuron processes under this serve."""
        mine = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        found = {}
        for pid, title in exmachina_processes().items():
            if pid in mine and title.startswith("exmachina: neuron "):
                found[title.removeprefix("exmachina: neuron ")] = pid
        return found

    def pid_of(self, title: str) -> int:
        """The pid of this serve's own process titled `exmachina: <title>`."""
        mine = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        wanted = f"exmachina: {title}"
        return next(pid for pid, t in exmachina_processes().items() if pid in mine and t == wanted)

    def post(self, body: bytes | dict, path: str = "/predict") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection = http.client.HTTPConnection(*self.address, timeout=60)
        try:
            connection.request("POST", path, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict]:
        connection = http.client.HTTPConnection(*self.address, timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def events(self) -> list[dict]:
        return RunDir(self.directory).read_metrics()


def _read_lines(stream, lines: list[str], arrived: queue.Queue) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        arrived.put(line)


def start_serve(run: Path, *args: str) -> tuple[subprocess.Popen, list[str], queue.Queue]:
    """`python -m exmachina serve RUN --port 0` in its own session, as from a terminal; its stdout and
    stderr lines are collected as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "exmachina", "serve", str(run), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    arrived: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines, arrived), daemon=True).start()
    return proc, lines, arrived


def _url(lines: list[str], arrived: queue.Queue) -> tuple[str, Path]:
    """The URL the server printed and the serve directory the launcher named, once both are out."""
    url = directory = None
    while url is None or directory is None:
        line = arrived.get(timeout=START_TIMEOUT_S)
        if found := re.search(r"logs in (\S+)", line):
            directory = Path(found[1])
        if found := re.search(r"serving (http://\S+)", line):
            url = found[1]
    return url, directory


def interrupt(proc: subprocess.Popen) -> int:
    """Ctrl-C, as a terminal sends it: SIGINT to the whole process group; the exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=60)


@contextlib.contextmanager
def serving(run: Path, *args: str) -> Iterator[Served]:
    proc, lines, arrived = start_serve(run, *args)
    try:
        url, directory = _url(lines, arrived)
        yield Served(proc, url, directory, lines)
    finally:
        if proc.poll() is None:
            interrupt(proc)


def test_serve_answers_as_model_predict_through_its_neuron_processes(xor_run):
    run, model = xor_run
    rows = np.random.default_rng(5).uniform(-2, 2, size=(300, 2))  # several batches of 64
    with serving(run) as served:
        assert sorted(served.neuron_pids()) == sorted(NEURONS)
        status, answer = served.post({"inputs": rows.tolist()})
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], model.predict(rows), rtol=0, atol=1e-9)
        status, about = served.get("/")
        assert status == 200
        assert [layer["size"] for layer in about["layers"]] == [2, 3, 1]
        assert [layer["activation"] for layer in about["layers"]] == ["identity", "tanh", "logistic"]
        assert served.get("/health") == (200, {"status": "ok", "requests": 1, "rows": 300, "restarts": 0})
        assert served.post({"inputs": []}) == (200, {"outputs": []})
        # concurrent requests of different sizes: their rows share batches, each gets its own back
        answers: dict[int, tuple[int, dict]] = {}
        threads = [
            threading.Thread(
                target=lambda n=n: answers.update({n: served.post({"inputs": rows[:n].tolist()})})
            )
            for n in (1, 2, 3, 17, 64, 65, 130)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for n, (status, answer) in answers.items():
            assert status == 200
            np.testing.assert_allclose(answer["outputs"], model.predict(rows[:n]), rtol=0, atol=1e-9)
        assert len(answers) == 7
        assert interrupt(served.proc) == 0
    assert "exmachina: serving stopped: 8 requests, 582 rows, 0 restarts" in served.lines
    logs = {p.stem for p in (served.directory / "neurons").glob("*.log")}
    assert logs == {*NEURONS, "coordinator", "supervisor"}
    shown = subprocess.run(
        [sys.executable, "-m", "exmachina", "logs", str(served.directory), "--neuron", "hidden1.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "hidden1.0  wired:" in shown.stdout, shown.stderr
    assert not list(served.directory.glob("**/*.ckpt")), "a serving neuron wrote a checkpoint"


def test_bad_and_oversized_requests_are_refused_in_one_line(xor_run):
    run, model = xor_run
    with serving(run) as served:
        assert served.post(b"{not json") == (400, {"error": "the body is not JSON"})
        assert served.post({"rows": [[0, 1]]})[0] == 400
        assert served.post({"inputs": [[0, 1], [1, 1], [1, 0, 1]]}) == (
            400,
            {"error": "row 2 has 3 values, the model takes 2"},
        )
        assert served.post({"inputs": [[0, 1], [1, "one"]]}) == (
            400,
            {"error": "row 1 holds a value that is not a number"},
        )
        assert served.post(b'{"inputs": [[0, 1], [NaN, 1]]}')[1] == {
            "error": "row 1 holds a value that is not a finite number"
        }
        assert served.post({"inputs": [[0, 1]]}, path="/elsewhere")[0] == 404
        too_many = {"inputs": [[0, 1]] * (front.MAX_ROWS + 1)}
        assert served.post(too_many)[0] == 413
        # a million rows: refused by the Content-Length alone, before a byte of the body is read
        million = json.dumps({"inputs": [[0.5, 0.25]] * 10**6}).encode()
        assert len(million) > front.MAX_BODY_BYTES
        connection = http.client.HTTPConnection(*served.address, timeout=60)
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Length", str(len(million)))
        connection.endheaders(million[:65536])
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read()) == {
            "error": f"a body of {len(million)} bytes: at most {front.MAX_BODY_BYTES}"
        }
        connection.close()
        # and the server still answers, exactly
        status, answer = served.post({"inputs": [[0, 1]]})
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], model.predict([[0, 1]]), rtol=0, atol=1e-9)
        # a second server on the same port: one line, exit 2, nothing left running, no serve directory
        port = served.address[1]
        before = set(run.glob("serve-*"))
        other = subprocess.run(
            [sys.executable, "-m", "exmachina", "serve", str(run), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        assert other.returncode == 2
        assert other.stderr.startswith(f"exmachina: cannot serve on 127.0.0.1:{port}: Address already in use")
        assert other.stderr.count("\n") == 1, other.stderr
        assert set(run.glob("serve-*")) == before


def _stream(served: Served, rows: np.ndarray, answers: list, stop: threading.Event) -> None:
    """Requests of 1 to 40 rows, one after the other, until told to stop."""
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    while not stop.is_set():
        start = int(rng.integers(0, len(rows) - 40))
        chosen = rows[start : start + int(rng.integers(1, 41))]
        answers.append((chosen, *served.post({"inputs": chosen.tolist()})))


def test_a_neuron_killed_while_requests_stream_is_restarted_and_no_answer_is_wrong(xor_run):
    run, model = xor_run
    rows = np.random.default_rng(9).uniform(-2, 2, size=(500, 2))
    answers: list = []
    stop = threading.Event()
    with serving(run) as served:
        streams = [threading.Thread(target=_stream, args=(served, rows, answers, stop)) for _ in range(3)]
        for thread in streams:
            thread.start()
        try:
            wait_for(lambda: len(answers) >= 10, timeout=60)
            victim = served.neuron_pids()["hidden1.1"]
            # stopped first, so that a request is surely caught inside the network when it dies
            os.kill(victim, signal.SIGSTOP)
            launched = _samples_launched(served)
            wait_for(lambda: _samples_launched(served) > launched, timeout=30)
            os.kill(victim, signal.SIGKILL)
            recovered = wait_for(lambda: [e for e in served.events() if e.get("event") == "recovered"], 60)
            assert recovered[0]["dropped"], "no sample was in flight when the neuron died"
            restarted = wait_for(lambda: served.neuron_pids().get("hidden1.1"), timeout=30)
            assert restarted != victim
            after = len(answers)
            wait_for(lambda: len(answers) >= after + 10, timeout=60)
        finally:
            stop.set()
            for thread in streams:
                thread.join(timeout=60)
        assert served.get("/health")[1]["restarts"] == 1
    for chosen, status, answer in answers:
        assert status == 200, answer
        np.testing.assert_allclose(answer["outputs"], model.predict(chosen), rtol=0, atol=1e-9)


def _samples_launched(served: Served) -> int:
    """Samples the coordinator has sent in, as its stats file says (rewritten at each stats interval)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((served.directory / "stats.json").read_text())["coordinator"]["sample"]
    return 0


def test_serving_goes_on_supervised_after_its_zygote_is_killed(xor_run):
    """The neurons a killed zygote leaves come to the supervisor, not to init: `exmachina kill` still
    finds them as this run's, and one killed then is restarted and answers right."""
    run, model = xor_run
    with serving(run) as served:
        zygote = served.pid_of("supervisor [zygote]")
        victim = served.neuron_pids()["hidden1.1"]
        os.kill(zygote, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(zygote) or psutil.Process(zygote).status() == "zombie")
        assert served.neuron_pids().get("hidden1.1") == victim, "the neurons left the supervisor's tree"
        wait_for(lambda: (served.directory / "stats.json").exists(), timeout=30)
        killer = subprocess.run(
            [sys.executable, "-m", "exmachina", "kill", str(served.directory), "--neuron", "hidden1.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert killer.returncode == 0, killer.stderr
        wait_for(lambda: served.neuron_pids().get("hidden1.1") not in (None, victim), timeout=30)
        said = "exmachina: neuron hidden1.1 ended (killed by SIGKILL): restarting it with the model's weights"
        wait_for(lambda: said in served.lines, timeout=30)
        status, answer = served.post({"inputs": [[1, 0], [1, 1]]})
        assert status == 200, answer
        np.testing.assert_allclose(answer["outputs"], model.predict([[1, 0], [1, 1]]), rtol=0, atol=1e-9)
        assert interrupt(served.proc) == 0
    assert "exmachina: stopping: answering the requests in flight ..." in served.lines


def test_a_killed_coordinator_ends_serving_with_one_line_saying_so(xor_run):
    run, _ = xor_run
    with serving(run) as served:
        os.kill(served.pid_of("coordinator"), signal.SIGKILL)
        assert served.proc.wait(timeout=60) == 1
    log = served.directory / "neurons" / "coordinator.log"
    said = f"exmachina: the coordinator ended (killed by SIGKILL): serving stopped, see {log}"
    wait_for(lambda: said in served.lines, timeout=10)  # the reader thread may be a line behind


def test_a_stalled_network_fails_its_request_with_503_and_serves_on(tmp_path):
    run, model = known_run(tmp_path, training={"learning_rate": 0.5, "epochs": 1, "stall_timeout": 2.0})
    with serving(run) as served:
        victim = served.neuron_pids()["hidden1.0"]
        os.kill(victim, signal.SIGSTOP)  # wedged, not dead: the supervisor sees nothing
        try:
            assert served.post({"inputs": [[0, 1]]}) == (503, {"error": "the network stalled"})
        finally:
            os.kill(victim, signal.SIGCONT)
        status, answer = served.post({"inputs": [[1, 0], [1, 1]]})
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], model.predict([[1, 0], [1, 1]]), rtol=0, atol=1e-9)


def test_ctrl_c_ends_every_process_and_leaves_no_socket(xor_run):
    run, _ = xor_run
    with serving(run) as served:
        pids = set(served.neuron_pids().values())
        assert served.post({"inputs": [[1, 0]]})[0] == 200
        assert interrupt(served.proc) == 0
    assert not pids & set(exmachina_processes()), "a neuron outlived Ctrl-C"
    assert RunDir(served.directory).read_summary()["status"] == "stopped"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--port", "99999"], "--port must be 0 to 65535 (0: any free port), got 99999"),
        (["--port", "-1"], "--port must be 0 to 65535 (0: any free port), got -1"),
        (["--port", "0", "--batch", "0"], "--in-flight must be 1 to"),
    ],
)
def test_a_bad_option_is_one_line_exit_2_and_starts_nothing(xor_run, args, said):
    run, _ = xor_run
    before = set(run.glob("serve-*"))
    result = subprocess.run(
        [sys.executable, "-m", "exmachina", "serve", str(run), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"exmachina: {said}") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "" and set(run.glob("serve-*")) == before


def test_a_run_without_a_model_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exmachina", "serve", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"exmachina: {tmp_path}: no model.npz (a run writes it when it ends or is stopped)"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "the body is not JSON"),
        (b"\xff\xfe", 400, "the body is not JSON"),
        (b"[[0, 1]]", 400, 'expected {"inputs": [[...], ...]}: a list of rows'),
        (b'{"inputs": {"a": 1}}', 400, 'expected {"inputs": [[...], ...]}: a list of rows'),
        (b'{"inputs": [[0, 1], 3]}', 400, "row 1 is not a list of numbers"),
        (b'{"inputs": [[0]]}', 400, "row 0 has 1 values, the model takes 2"),
        (b'{"inputs": [[0, 1], [true, false]]}', 400, "row 1 holds a value that is not a number"),
        (b'{"inputs": [[0, null]]}', 400, "row 0 holds a value that is not a number"),
        (b'{"inputs": [[0, [1]]]}', 400, "row 0 holds a value that is not a number"),
        (b'{"inputs": [[0, 1], [1e999, 0]]}', 400, "row 1 holds a value that is not a finite number"),
        (b'{"inputs": [[0, 1], [1, 2], [3, 4]]}', 413, "3 rows: at most 2 a request"),
    ],
)
def test_parse_rows_refuses_what_is_not_rows_of_the_width(body, status, reason):
    with pytest.raises(Refused) as refused:
        parse_rows(body, width=2, max_rows=2)
    assert (refused.value.status, str(refused.value)) == (status, reason)


@pytest.mark.unit
def test_parse_rows_reads_numbers_as_floats():
    rows = parse_rows(b'{"inputs": [[0, 1.5], [-2, 1e-3]]}', width=2)
    assert rows.dtype == float and rows.tolist() == [[0.0, 1.5], [-2.0, 0.001]]
