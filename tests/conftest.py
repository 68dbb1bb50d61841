"""Fixtures only (the helpers are in tests/helpers.py): every test that starts processes must leave none
behind, nor any socket file."""

from __future__ import annotations

import contextlib
import signal
import time

import psutil
import pytest

from tests.helpers import TITLE, exmachina_processes

# Tests send Ctrl-C (SIGINT) to the commands they start. A shell starts a background job (`make
# test &`) with SIGINT ignored, and an ignored signal stays ignored in every program it runs: Python
# would then install no KeyboardInterrupt handler. A handled signal is reset to the default on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# What supervises a neuron: the local supervisor, or a host agent on a Ray node (titled by Ray or by
# itself), which a Ray cluster's raylet watches in turn.
SUPERVISORS = (f"{TITLE} supervisor", f"{TITLE} agent", "ray::HostAgent")


def _orphaned(pid: int) -> bool:
    """No live supervisor or host agent above it: nobody will ever stop this process."""
    try:
        proc = psutil.Process(pid)
        if " ".join(proc.cmdline()).strip().startswith(f"{TITLE} supervisor"):
            return proc.ppid() == 1  # a supervisor is the top of its tree: orphaned if its parent is gone
        for parent in proc.parents():
            if " ".join(parent.cmdline()).strip().startswith(SUPERVISORS):
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
def no_leftovers(request, tmp_path_factory, monkeypatch):
    """Give each test its own socket directory, then prove no process and no socket file outlived it."""
    sockets = tmp_path_factory.mktemp("sock", numbered=True)
    monkeypatch.setenv("EXMACHINA_SOCKET_DIR", str(sockets))
    if request.node.get_closest_marker("unit") is not None:
        yield from _starts_nothing(sockets)
        return
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
            if p.pid not in children_before and _running(p) and not _cluster_worker(p, children_before)
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


def _running(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def _cluster_worker(proc: psutil.Process, children_before: set[int]) -> bool:
    """An idle worker of a Ray cluster that a longer-lived fixture started: its raylet keeps a pool
    of them and ends them in its own time. A host agent is an exmachina process, checked above."""
    with contextlib.suppress(psutil.Error):
        return proc.name().startswith("ray::IDLE") and proc.ppid() in children_before
    return False


def _starts_nothing(sockets):
    """For a unit test: it may start no process at all, so its own children are all there is to check
    (a scan of every process on the machine would cost more than most unit tests take)."""
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    yield sockets
    started = [p for p in me.children(recursive=True) if p.pid not in children_before]
    for proc in started:  # do not let one failure cascade into the next test
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not started, f"a unit test started processes: {[p.pid for p in started]}"
    stale = [p for p in sockets.rglob("*") if p.is_socket()]
    assert not stale, f"socket files left behind: {stale}"
