"""Tests for the `supervisor` package, with real OS processes (no mocks).

Every test runs under a fixture that fails it if any process it started is still alive afterwards.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import ChildSpec, Event, Outcome, RestartIntensityExceeded, Supervisor
from supervisor.lifeline import _poll_until_gone
from tests import supervisor_children as kids

REPO_ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ["tests.supervisor_children"]


# -- helpers -------------------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    """True if `pid` has exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _is_multiprocessing_helper(proc: psutil.Process) -> bool:
    """The per-interpreter forkserver and resource tracker outlive a test by design."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "multiprocessing.forkserver" in cmdline or "multiprocessing.resource_tracker" in cmdline


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _wait_ready(ready_dir: Path, name: str, pid: int) -> None:
    _wait_until(lambda: (ready_dir / f"{name}.{pid}").exists(), what=f"child {name} (pid {pid}) ready")


class Recorder:
    """on_event callback that stores events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), timeout), self.events

    def seq(self, *kinds: str) -> list[tuple[str, str | None]]:
        return [(e.kind, e.child) for e in self.events if e.kind in kinds]

    def count(self, kind: str, child: str | None) -> int:
        return sum(1 for e in self.events if e.kind == kind and e.child == child)


class Background:
    """Runs `Supervisor.run()` in a thread so a test can act while it supervises."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.outcome: Outcome | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.outcome = self.sup.run()

    def finish(self, timeout: float = 15.0) -> Outcome:
        self.sup.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return after request_stop()"
        assert self.outcome is not None
        return self.outcome


def _supervisor(children: list[ChildSpec], **kwargs: object) -> Supervisor:
    kwargs.setdefault("preload", PRELOAD)
    return Supervisor(children, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", autouse=True)
def forkserver_running() -> None:
    """Start this interpreter's forkserver and resource tracker before any per-test process snapshot.

    Both are shared by every test and outlive each one by design; started here (a module-scoped fixture
    runs before function-scoped ones, including any leftover check in conftest.py) they are never
    mistaken for processes a test left behind.
    """
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail the test if any process it started (directly or not) is still alive shortly after it."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [
            p
            for p in me.children(recursive=True)
            if p.pid not in before and not _gone(p.pid) and not _is_multiprocessing_helper(p)
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            for p in left:
                p.kill()
            pytest.fail(f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}")
        time.sleep(0.05)


@pytest.fixture
def ready_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ready"
    path.mkdir()
    return path


# -- specs and configuration ---------------------------------------------------------------------------


def test_spec_validation_gives_clear_errors() -> None:
    with pytest.raises(ValueError, match="restart must be one of"):
        ChildSpec("a", kids.sleeper, restart="sometimes")
    with pytest.raises(ValueError, match="shutdown must be"):
        ChildSpec("a", kids.sleeper, shutdown=-1)
    with pytest.raises(ValueError, match="non-empty"):
        ChildSpec("", kids.sleeper)
    with pytest.raises(ValueError, match="significant"):
        ChildSpec("a", kids.sleeper, significant=True)  # permanent + significant is meaningless
    with pytest.raises(ValueError, match="duplicate child ids"):
        Supervisor([ChildSpec("a", kids.sleeper), ChildSpec("a", kids.sleeper)])
    with pytest.raises(ValueError, match="strategy"):
        Supervisor([ChildSpec("a", kids.sleeper)], strategy="rest_for_everyone")
    with pytest.raises(ValueError, match="auto_shutdown"):
        Supervisor([ChildSpec("a", kids.sleeper)], auto_shutdown="sometimes")


# -- restart semantics ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_one_for_one_restarts_only_the_crashed_child(tmp_path: Path) -> None:
    rec = Recorder()
    sup = _supervisor(
        [
            ChildSpec("a", kids.sleeper),
            ChildSpec("b", kids.crash_once, args=(str(tmp_path / "b.crashed"),)),
            ChildSpec("c", kids.sleeper),
        ],
        on_event=rec,
    )
    sup.start()
    first = {c["id"]: c["pid"] for c in sup.which_children()}
    bg = Background(sup)
    rec.wait_for(lambda evs: sum(1 for e in evs if e.kind == "started" and e.child == "b") == 2)

    assert sup.pid_of("a") == first["a"]
    assert sup.pid_of("c") == first["c"]
    assert sup.pid_of("b") not in (None, first["b"])
    assert _gone(first["b"])
    assert [c["restarts"] for c in sup.which_children()] == [0, 1, 0]
    assert rec.count("restarting", "b") == 1 and rec.count("restarting", "a") == 0

    outcome = bg.finish()
    assert outcome.reason == "stop_requested"
    assert outcome.restarts == 1
    assert set(outcome.exitcodes) == {"a", "b", "c"}


@pytest.mark.timeout(60)
def test_transient_normal_exit_and_temporary_are_not_restarted() -> None:
    rec = Recorder()
    sup = _supervisor(
        [
            ChildSpec("transient_ok", kids.exit_with, args=(0,), restart="transient"),
            ChildSpec("temporary_bad", kids.exit_with, args=(3,), restart="temporary"),
        ],
        on_event=rec,
    )
    outcome = sup.run()
    assert outcome == Outcome(
        reason="all_exited", exitcodes={"transient_ok": 0, "temporary_bad": 3}, restarts=0
    )
    assert not rec.seq("restarting")
    assert rec.seq("stopped") == [("stopped", None)]


@pytest.mark.timeout(60)
def test_transient_is_restarted_after_abnormal_exit(tmp_path: Path) -> None:
    sup = _supervisor(
        [
            ChildSpec(
                "t",
                kids.crash_once,
                args=(str(tmp_path / "t.crashed"),),
                kwargs={"then_exit": True},
                restart="transient",
            )
        ]
    )
    outcome = sup.run()
    assert outcome == Outcome(reason="all_exited", exitcodes={"t": 0}, restarts=1)
    assert sup.which_children()[0]["restarts"] == 1


@pytest.mark.timeout(60)
def test_exit_codes_follow_the_target() -> None:
    sup = _supervisor(
        [
            ChildSpec("returns", kids.return_normally, restart="temporary"),
            ChildSpec("raises", kids.raise_error, restart="temporary"),
            ChildSpec("exits5", kids.exit_with, args=(5,), restart="temporary"),
        ]
    )
    outcome = sup.run()
    assert outcome.reason == "all_exited"
    assert outcome.exitcodes == {"returns": 0, "raises": 1, "exits5": 5}


@pytest.mark.timeout(60)
def test_one_for_all_restarts_every_child_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    sup = _supervisor(
        [
            ChildSpec("a", kids.sleeper),
            ChildSpec("b", kids.crash_once, args=(str(tmp_path / "b.crashed"),)),
            ChildSpec("c", kids.sleeper),
        ],
        strategy="one_for_all",
        on_event=rec,
    )
    sup.start()
    first = {c["id"]: c["pid"] for c in sup.which_children()}
    bg = Background(sup)
    rec.wait_for(lambda evs: sum(1 for e in evs if e.kind == "started" and e.child == "c") == 2)

    now = sup.pids
    assert all(now[i] not in (None, first[i]) for i in "abc"), (first, now)
    assert all(_gone(pid) for pid in first.values())
    # After b's crash: the others stop in reverse start order, then all start in start order.
    crash = next(i for i, e in enumerate(rec.events) if e.kind == "exited" and e.child == "b")
    after = [(e.kind, e.child) for e in rec.events[crash + 1 :] if e.kind in ("stopping", "started")]
    assert after == [
        ("stopping", "c"),
        ("stopping", "a"),
        ("started", "a"),
        ("started", "b"),
        ("started", "c"),
    ]
    assert [c["restarts"] for c in sup.which_children()] == [1, 1, 1]

    outcome = bg.finish()
    assert outcome.reason == "stop_requested"
    assert outcome.restarts == 1  # a group restart counts once, as in OTP


@pytest.mark.timeout(60)
def test_one_for_all_does_not_restart_temporary_children(tmp_path: Path) -> None:
    rec = Recorder()
    sup = _supervisor(
        [
            ChildSpec("temp", kids.sleeper, restart="temporary"),
            ChildSpec("b", kids.crash_once, args=(str(tmp_path / "b.crashed"),)),
        ],
        strategy="one_for_all",
        on_event=rec,
    )
    bg = Background(sup)
    rec.wait_for(lambda evs: sum(1 for e in evs if e.kind == "started" and e.child == "b") == 2)
    assert sup.pid_of("temp") is None
    assert rec.count("started", "temp") == 1
    assert bg.finish().restarts == 1


@pytest.mark.timeout(60)
def test_restart_intensity_exceeded_stops_everything() -> None:
    rec = Recorder()
    sup = _supervisor(
        [ChildSpec("steady", kids.sleeper), ChildSpec("flaky", kids.exit_with, args=(1,))],
        intensity=2,
        period=30.0,
        on_event=rec,
    )
    outcome = sup.run()
    assert outcome.reason == "intensity_exceeded"
    assert outcome.restarts == 2
    assert outcome.exitcodes == {"steady": -signal.SIGTERM, "flaky": 1}
    assert rec.seq("intensity_exceeded") == [("intensity_exceeded", "flaky")]
    assert rec.count("started", "flaky") == 3
    assert not any(c["alive"] for c in sup.which_children())
    with pytest.raises(RestartIntensityExceeded):
        outcome.check()


@pytest.mark.timeout(60)
def test_restarts_outside_the_period_do_not_accumulate() -> None:
    # Two crashes 0.4 s apart with intensity=1 and period=0.2: each is alone in its window.
    sup = _supervisor(
        [ChildSpec("t", kids.exit_with, args=(1, 0.4), restart="transient")], intensity=1, period=0.2
    )
    bg = Background(sup)
    _wait_until(lambda: sup.which_children()[0]["restarts"] >= 2, what="two restarts")
    outcome = bg.finish()
    assert outcome.reason == "stop_requested"
    assert outcome.restarts >= 2


# -- auto_shutdown ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_auto_shutdown_any_significant() -> None:
    sup = _supervisor(
        [
            ChildSpec("worker", kids.sleeper),
            ChildSpec("job", kids.exit_with, args=(0, 0.3), restart="transient", significant=True),
        ],
        auto_shutdown="any_significant",
    )
    outcome = sup.run()
    assert outcome == Outcome(
        reason="significant_exit", exitcodes={"worker": -signal.SIGTERM, "job": 0}, restarts=0
    )


@pytest.mark.timeout(60)
def test_auto_shutdown_all_significant_waits_for_every_significant_child(tmp_path: Path) -> None:
    rec = Recorder()
    release = tmp_path / "release"
    sup = _supervisor(
        [
            ChildSpec("worker", kids.sleeper),
            ChildSpec("quick", kids.exit_with, args=(0,), restart="temporary", significant=True),
            ChildSpec(
                "slow",
                kids.exit_when_file_exists,
                args=(str(release),),
                restart="temporary",
                significant=True,
            ),
        ],
        auto_shutdown="all_significant",
        on_event=rec,
    )
    bg = Background(sup)
    rec.wait_for(lambda evs: any(e.kind == "exited" and e.child == "quick" for e in evs))
    time.sleep(0.2)
    assert bg.thread.is_alive(), "one significant child ending must not end the run"
    assert sup.pid_of("worker") is not None and sup.pid_of("slow") is not None
    release.touch()
    bg.thread.join(15)
    assert not bg.thread.is_alive()
    assert bg.outcome is not None and bg.outcome.reason == "significant_exit"
    assert [child for _, child in rec.seq("exited")] == ["quick", "slow", "worker"]


@pytest.mark.timeout(60)
def test_significant_child_that_is_restarted_does_not_end_the_run(tmp_path: Path) -> None:
    # A transient significant child that crashes is restarted; only its final exit 0 ends the run.
    sup = _supervisor(
        [
            ChildSpec("worker", kids.sleeper),
            ChildSpec(
                "job",
                kids.crash_once,
                args=(str(tmp_path / "job.crashed"),),
                kwargs={"then_exit": True},
                restart="transient",
                significant=True,
            ),
        ],
        auto_shutdown="any_significant",
    )
    outcome = sup.run()
    assert outcome.reason == "significant_exit"
    assert outcome.restarts == 1


# -- shutdown ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_shutdown_is_in_reverse_start_order(tmp_path: Path, ready_dir: Path) -> None:
    log = tmp_path / "terminated.log"
    names = ["a", "b", "c", "d"]
    rec = Recorder()
    specs = [
        ChildSpec(n, kids.sleeper, kwargs={"name": n, "ready_dir": str(ready_dir), "log_path": str(log)})
        for n in names
    ]
    with _supervisor(specs, on_event=rec) as sup:
        for n in names:
            _wait_ready(ready_dir, n, sup.pid_of(n))
    assert log.read_text().split() == ["d", "c", "b", "a"]
    assert rec.seq("stopping") == [("stopping", n) for n in reversed(names)]
    assert rec.events[-1].kind == "stopped"
    assert [c["exitcode"] for c in sup.which_children()] == [0, 0, 0, 0]
    sup.stop()  # a second stop is harmless
    assert rec.seq("stopped") == [("stopped", None)]


@pytest.mark.timeout(60)
def test_child_ignoring_sigterm_is_killed_after_its_shutdown_time(ready_dir: Path) -> None:
    sup = _supervisor(
        [
            ChildSpec("polite", kids.sleeper, kwargs={"name": "polite", "ready_dir": str(ready_dir)}),
            ChildSpec(
                "stubborn",
                kids.sleeper,
                kwargs={"name": "stubborn", "ready_dir": str(ready_dir), "ignore_term": True},
                shutdown=0.5,
            ),
        ]
    )
    sup.start()
    _wait_ready(ready_dir, "stubborn", sup.pid_of("stubborn"))
    _wait_ready(ready_dir, "polite", sup.pid_of("polite"))
    t0 = time.monotonic()
    sup.stop()
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 3.0
    codes = {c["id"]: c["exitcode"] for c in sup.which_children()}
    assert codes == {"polite": -signal.SIGTERM, "stubborn": -signal.SIGKILL}


@pytest.mark.timeout(60)
def test_request_stop_from_a_signal_handler() -> None:
    sup = _supervisor([ChildSpec("a", kids.sleeper), ChildSpec("b", kids.sleeper)])
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: sup.request_stop())
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        t0 = time.monotonic()
        outcome = sup.run()  # main thread: where Python runs signal handlers
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert outcome.reason == "stop_requested"
    assert time.monotonic() - t0 < 5.0
    assert outcome.exitcodes == {"a": -signal.SIGTERM, "b": -signal.SIGTERM}


@pytest.mark.timeout(60)
def test_request_stop_from_another_thread() -> None:
    sup = _supervisor([ChildSpec("a", kids.sleeper)])
    timer = threading.Timer(0.3, sup.request_stop)
    timer.start()
    outcome = sup.run()
    timer.join()
    assert outcome.reason == "stop_requested"
    assert not sup.which_children()[0]["alive"]


# -- operator interface and process wrapper -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_restart_child_replaces_one_process_while_running() -> None:
    rec = Recorder()
    sup = _supervisor([ChildSpec("a", kids.sleeper), ChildSpec("b", kids.sleeper)], on_event=rec)
    sup.start()
    old_a, old_b = sup.pid_of("a"), sup.pid_of("b")
    bg = Background(sup)
    sup.restart_child("a")
    new_a = sup.pid_of("a")
    assert new_a not in (None, old_a)
    assert _gone(old_a)
    assert sup.pid_of("b") == old_b
    time.sleep(0.3)  # give run() a chance to (wrongly) react to the old process's exit
    assert sup.pid_of("a") == new_a
    assert rec.count("started", "a") == 2
    outcome = bg.finish()
    assert outcome.restarts == 0  # operator restarts are not automatic restarts
    assert [c["restarts"] for c in sup.which_children()] == [1, 0]
    with pytest.raises(RuntimeError, match=r"not running|stopped"):
        sup.restart_child("a")
    with pytest.raises(KeyError):
        sup.pid_of("nope")


@pytest.mark.timeout(60)
def test_context_manager_and_queries() -> None:
    specs = [ChildSpec("a", kids.sleeper), ChildSpec("b", kids.sleeper)]
    with _supervisor(specs) as sup:
        sup.start()  # idempotent
        pids = sup.pids
        assert list(pids) == ["a", "b"]
        assert all(isinstance(p, int) for p in pids.values())
        assert len(set(pids.values())) == 2
        rows = sup.which_children()
        assert [(r["id"], r["pid"], r["alive"], r["restarts"], r["exitcode"]) for r in rows] == [
            ("a", pids["a"], True, 0, None),
            ("b", pids["b"], True, 0, None),
        ]
    assert sup.pids == {"a": None, "b": None}
    assert all(_gone(p) for p in pids.values())


@pytest.mark.timeout(60)
def test_failed_start_stops_children_already_started() -> None:
    sup = _supervisor(
        [ChildSpec("ok", kids.sleeper), ChildSpec("unpicklable", lambda: None)], context="forkserver"
    )
    with pytest.raises(RuntimeError, match="'unpicklable' failed to start"):
        sup.start()
    assert not any(c["alive"] for c in sup.which_children())


@pytest.mark.timeout(60)
def test_failing_on_event_callback_does_not_break_supervision() -> None:
    def explode(event: Event) -> None:
        raise RuntimeError("callback bug")

    sup = _supervisor([ChildSpec("t", kids.exit_with, args=(0,), restart="temporary")], on_event=explode)
    assert sup.run().reason == "all_exited"


@pytest.mark.timeout(60)
def test_process_title_is_visible(ready_dir: Path) -> None:
    title = "suptest: titled worker 3"
    spec = ChildSpec("w", kids.sleeper, kwargs={"name": "w", "ready_dir": str(ready_dir)}, title=title)
    with _supervisor([spec]) as sup:
        pid = sup.pid_of("w")
        _wait_ready(ready_dir, "w", pid)
        assert " ".join(psutil.Process(pid).cmdline()).strip() == title


@pytest.mark.timeout(60)
def test_fork_context_also_works() -> None:
    sup = _supervisor([ChildSpec("t", kids.exit_with, args=(4,), restart="temporary")], context="fork")
    assert sup.run() == Outcome(reason="all_exited", exitcodes={"t": 4}, restarts=0)


@pytest.mark.timeout(60)
def test_forkserver_context_also_works() -> None:
    sup = _supervisor([ChildSpec("t", kids.exit_with, args=(5,), restart="temporary")], context="forkserver")
    assert sup.run() == Outcome(reason="all_exited", exitcodes={"t": 5}, restarts=0)


# -- zygote (the default start method) ---------------------------------------------------------------


def _zygote_of(pid: int) -> psutil.Process:
    zygote = psutil.Process(pid).parent()
    assert zygote.pid != os.getpid() and zygote.ppid() == os.getpid()  # supervisor -> zygote -> child
    return zygote


@pytest.mark.timeout(60)
def test_children_are_forked_by_a_zygote_that_ran_the_warm_up_and_ends_with_the_supervisor(
    tmp_path: Path, ready_dir: Path
) -> None:
    report = tmp_path / "warmed"
    specs = [
        ChildSpec("report", kids.report_warm_up, args=(str(report),), restart="temporary"),
        ChildSpec("w", kids.sleeper, kwargs={"name": "w", "ready_dir": str(ready_dir)}),
    ]
    sup = _supervisor(specs, preload=[*PRELOAD, "tests.supervisor_children:warm_up"])
    with sup:
        pid = sup.pid_of("w")
        _wait_ready(ready_dir, "w", pid)
        zygote = _zygote_of(pid)
        assert " ".join(zygote.cmdline()).strip().endswith("[zygote]")  # titled after its supervisor
        _wait_until(lambda: report.exists() and report.read_text() != "", what="the warm-up report")
        # The warm-up ran once, in the zygote, and the child inherited its effect.
        assert int(report.read_text()) == zygote.pid
    assert _gone(zygote.pid) and _gone(pid)


@pytest.mark.timeout(60)
def test_a_preload_that_fails_stops_the_start_with_its_name() -> None:
    sup = _supervisor([ChildSpec("a", kids.sleeper)], preload=["tests.no_such_module"])
    with pytest.raises(
        RuntimeError, match=re.escape("could not preload 'tests.no_such_module': ModuleNotFoundError")
    ):
        sup.start()
    warm_up_fails = _supervisor([ChildSpec("a", kids.sleeper)], preload=["tests.supervisor_children:nope"])
    with pytest.raises(RuntimeError, match=re.escape("'tests.supervisor_children:nope': AttributeError")):
        warm_up_fails.start()
    # No zygote left either (the forkserver and resource tracker are this interpreter's, by design;
    # one that has just ended is a zombie whose command line can no longer be read).
    left = [p for p in psutil.Process().children() if not _is_multiprocessing_helper(p)]
    assert [p for p in left if p.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.timeout(60)
def test_children_outlive_a_killed_zygote_and_are_still_supervised(tmp_path: Path, ready_dir: Path) -> None:
    log = tmp_path / "stopped.log"
    names = ("a", "b")
    specs = [
        ChildSpec(n, kids.sleeper, kwargs={"name": n, "ready_dir": str(ready_dir), "log_path": str(log)})
        for n in names
    ]
    recorder = Recorder()
    sup = _supervisor(specs, on_event=recorder)
    bg = Background(sup)
    _wait_until(lambda: all(sup.pid_of(n) for n in names), what="both children started")
    pids = {n: sup.pid_of(n) for n in names}
    for n in names:
        _wait_ready(ready_dir, n, pids[n])
    zygote = _zygote_of(pids["a"])
    zygote.kill()
    zygote.wait(5)
    time.sleep(0.3)  # the supervisor saw the exit pipes close: it must not take that for exits
    assert recorder.count("exited", "a") == recorder.count("exited", "b") == 0
    assert sup.pids == pids
    # A restart needs a fork: a new zygote is started for it.
    sup.restart_child("b")
    new_b = sup.pid_of("b")
    assert new_b != pids["b"] and psutil.Process(new_b).parent().pid not in (zygote.pid, os.getpid())
    _wait_ready(ready_dir, "b", new_b)
    outcome = bg.finish()
    assert outcome.reason == "stop_requested"
    assert sorted(log.read_text().split()) == ["a", "b", "b"]  # each got SIGTERM and ran its handler
    assert all(_gone(p) for p in [*pids.values(), new_b])


# -- lifeline ---------------------------------------------------------------------------------------------

_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from supervisor import ChildSpec, Supervisor
    from tests.supervisor_children import sleeper

    ready, log, context = sys.argv[1], sys.argv[2], sys.argv[3]
    specs = [
        ChildSpec("plain", sleeper, kwargs={"name": "plain", "ready_dir": ready}),
        ChildSpec("cleanup", sleeper, kwargs={"name": "cleanup", "ready_dir": ready, "log_path": log}),
        ChildSpec("stubborn", sleeper, kwargs={"name": "stubborn", "ready_dir": ready, "ignore_term": True}),
    ]
    sup = Supervisor(specs, preload=["tests.supervisor_children"], context=context)
    sup.start()
    print(json.dumps(sup.pids), flush=True)
    sup.run()
    """
)


def _zygotes(supervisor: psutil.Process, forked: Iterable[int] = ()) -> list[int]:
    """The live zygotes of `supervisor` (a killed one may linger as a zombie until it is reaped).
    `forked`: the children it forked, which a dead zygote leaves to the supervisor, its subreaper,
    still titled as the zygote was."""
    zygotes = []
    for child in (c for c in supervisor.children() if c.pid not in set(forked)):
        with contextlib.suppress(psutil.Error):
            if " ".join(child.cmdline()).endswith("[zygote]"):
                zygotes.append(child.pid)
    return zygotes


def _pidfds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    links = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            links.append(os.readlink(fd))
    return links.count("anon_inode:[pidfd]")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("context", "zygote_killed_first"),
    [("zygote", False), ("zygote", True), ("forkserver", False)],
    ids=["zygote", "adopted-by-a-new-zygote", "forkserver-lifeline-threads"],
)
def test_children_exit_when_supervisor_is_sigkilled(
    tmp_path: Path, ready_dir: Path, context: str, zygote_killed_first: bool
) -> None:
    log = tmp_path / "cleanup.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(ready_dir), str(log), context],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    everything: list[int] = []
    try:
        pids = json.loads(proc.stdout.readline())
        for name, pid in pids.items():
            _wait_ready(ready_dir, name, pid)
        supervisor = psutil.Process(proc.pid)
        # Also the script's zygote: nothing at all may survive it.
        everything += [p.pid for p in supervisor.children(recursive=True)]
        assert set(pids.values()) <= set(everything)
        if zygote_killed_first:  # the children live on, and a new zygote adopts them
            forked = pids.values()
            (zygote,) = _zygotes(supervisor, forked)
            os.kill(zygote, signal.SIGKILL)
            _wait_until(lambda: _zygotes(supervisor, forked) not in ([], [zygote]), what="a new zygote")
            (new_zygote,) = _zygotes(supervisor, forked)
            everything.append(new_zygote)
            # It holds a pidfd of each adopted child (its own children, once forked, hold none).
            _wait_until(lambda: _pidfds(new_zygote) == len(pids), what="the new zygote to adopt them")
            assert not any(_gone(pid) for pid in pids.values())
        proc.kill()
        proc.wait(5)
        _wait_until(lambda: all(_gone(p) for p in everything), timeout=5.0, what="orphans to exit")
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
        for pid in everything:  # after a failure above: leave nothing behind either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The child with a SIGTERM handler ran it, and the one ignoring SIGTERM was ended after the grace.
    assert log.read_text().split() == ["cleanup"]


@pytest.mark.timeout(60)
def test_lifeline_fallback_polling_notices_a_dead_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher = threading.Thread(target=_poll_until_gone, args=(proc.pid,), daemon=True)
    watcher.start()
    time.sleep(0.2)
    assert watcher.is_alive()
    proc.kill()
    proc.wait()
    watcher.join(3.0)
    assert not watcher.is_alive()
