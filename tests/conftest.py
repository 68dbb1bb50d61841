"""Shared fixtures: every test that starts processes must leave none behind, nor any socket file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

# Tests send Ctrl-C (SIGINT) to the commands they start. A shell starts a background job (`make
# test &`) with SIGINT ignored, and an ignored signal stays ignored in every program it runs: Python
# would then install no KeyboardInterrupt handler. A handled signal is reset to the default on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "semeion.data"
TITLE = "exmachina:"


def exmachina_processes() -> dict[int, str]:
    """Live processes titled `exmachina: ...` (neurons, coordinators, supervisors)."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = " ".join(a for a in proc.info["cmdline"] or [] if a).strip()
            if cmdline.startswith(TITLE) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found[proc.info["pid"]] = cmdline
        except psutil.Error:
            continue
    return found


def _orphaned(pid: int) -> bool:
    """No live `exmachina: supervisor` above it: nobody will ever stop this process."""
    try:
        proc = psutil.Process(pid)
        if " ".join(proc.cmdline()).strip().startswith(f"{TITLE} supervisor"):
            return proc.ppid() == 1  # a supervisor is the top of its tree: orphaned if its parent is gone
        for parent in proc.parents():
            if " ".join(parent.cmdline()).strip().startswith(f"{TITLE} supervisor"):
                return False
    except psutil.Error:
        return False
    return True


def _ours_or_orphaned(before: set[int], me: psutil.Process) -> dict[int, str]:
    """New exmachina processes that this test started, or that nobody supervises any more. Others
    (a run of another test session on the same machine) are left alone."""
    mine = {p.pid for p in me.children(recursive=True)}
    return {
        pid: t
        for pid, t in exmachina_processes().items()
        if pid not in before and (pid in mine or _orphaned(pid))
    }


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path_factory, monkeypatch):
    """Give each test its own socket directory, then prove no process and no socket file outlived it."""
    sockets = tmp_path_factory.mktemp("sock", numbered=True)
    monkeypatch.setenv("EXMACHINA_SOCKET_DIR", str(sockets))
    before = set(exmachina_processes())
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    yield sockets
    deadline = time.monotonic() + 10
    while True:
        left = _ours_or_orphaned(before, me)
        kids = [
            p
            for p in me.children(recursive=True)
            if p.pid not in children_before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if (not left and not kids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for proc in kids:  # do not let one failure cascade into the next test
        proc.kill()
    for pid in left:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not left, f"processes left behind: {left}"
    assert not kids, f"child processes left behind: {[p.pid for p in kids]}"
    stale = [p for p in sockets.rglob("*") if p.is_socket()]
    assert not stale, f"socket files left behind: {stale}"


def xor_config(**sections) -> dict:
    config = {
        "name": "xor",
        "seed": 3,
        "network": {
            "layers": [
                {"name": "input", "size": 2},
                {"name": "hidden1", "size": 3, "activation": "tanh"},
                {"name": "output", "size": 1, "activation": "logistic"},
            ]
        },
        "training": {"learning_rate": 0.5, "epochs": 100},
        "data": {"source": "xor"},
        "runtime": {"log_level": "info"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(directory: Path, config: dict, name: str = "config.yaml") -> Path:
    config = {**config, "runtime": {**config.get("runtime", {}), "runs_dir": str(directory / "runs")}}
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def learn_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "exmachina.supervisor", "--config", str(config_path)]


def run_learn(config_path: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Train through the real entry point, as a user would."""
    return subprocess.run(
        learn_command(config_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config_path.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def start_learn(config_path: Path) -> subprocess.Popen:
    """Start training in its own session, as a terminal would (so killpg reaches the whole group)."""
    return subprocess.Popen(
        learn_command(config_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config_path.parent,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
