"""The supervisor: starts children, restarts them by policy, and shuts everything down in order.

Modelled on Erlang/OTP's `supervisor`: child specs with permanent/transient/temporary restart types,
one_for_one and one_for_all strategies, restart intensity (at most `intensity` restarts in `period`
seconds, beyond which the supervisor gives up), significant children with `auto_shutdown`, and shutdown
in reverse start order with a per-child SIGTERM-to-SIGKILL grace period. Children are forked by a
zygote (`supervisor.zygote`) that has imported `preload` first, so they share those modules' memory;
`context` may instead name a multiprocessing start method.

The supervising loop blocks in `multiprocessing.connection.wait` on the children's sentinels plus the
read end of a self-pipe; `request_stop` writes to that pipe, so it is safe to call from a signal
handler. All child bookkeeping happens under one re-entrant lock, so operator calls (`restart_child`,
`stop`, queries) may come from other threads while `run` supervises; they wait while a shutdown or
restart is in progress.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, cast

import setproctitle

from .process import ChildProcess, Starter
from .spec import ChildSpec, Restart
from .zygote import Zygote

log = logging.getLogger(__name__)

STRATEGIES = ("one_for_one", "one_for_all")
AUTO_SHUTDOWN = ("never", "any_significant", "all_significant")


@dataclass(frozen=True)
class Event:
    """Something the supervisor did or saw, passed to `on_event`.

    kind: "started" (child, pid) | "exited" (child, pid, exitcode; negative = killed by that signal)
    | "restarting" (child about to be started again; pid/exitcode of the process it replaces)
    | "intensity_exceeded" (child whose restart was refused) | "stopping" (child, pid: SIGTERM is being
    sent during a shutdown or operator restart) | "stopped" (child None: shutdown complete, nothing alive).
    """

    kind: str
    child: str | None
    pid: int | None
    exitcode: int | None
    time: float


@dataclass(frozen=True)
class Outcome:
    """How a `run` ended.

    reason: "significant_exit" (auto_shutdown fired), "stop_requested", "intensity_exceeded" or
    "all_exited" (every child ended and none is to be restarted).
    exitcodes: last exit code of every child after shutdown.
    restarts: automatic restarts during the run (a one_for_all group restart counts once, as in OTP;
    operator `restart_child` calls do not count).
    """

    reason: str
    exitcodes: dict[str, int | None]
    restarts: int

    def check(self) -> Outcome:
        """Return self, or raise `RestartIntensityExceeded` if the supervisor gave up restarting."""
        if self.reason == "intensity_exceeded":
            raise RestartIntensityExceeded(f"restart intensity exceeded; exit codes: {self.exitcodes}")
        return self


class RestartIntensityExceeded(RuntimeError):
    """Children kept failing faster than the configured restart intensity allows."""


class Supervisor:
    """Supervises a fixed list of child processes (see the module docstring for the semantics)."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: str = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        auto_shutdown: str = "never",
        context: str = "zygote",
        preload: Sequence[str] = (),
        on_event: Callable[[Event], None] | None = None,
        subreaper: bool = False,
    ) -> None:
        specs = tuple(children)
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"children must be ChildSpec instances, got {spec!r}")
        ids = [spec.id for spec in specs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate child ids: {duplicates}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if auto_shutdown not in AUTO_SHUTDOWN:
            raise ValueError(f"auto_shutdown must be one of {list(AUTO_SHUTDOWN)}, got {auto_shutdown!r}")
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity!r}")
        if period <= 0:
            raise ValueError(f"period must be > 0, got {period!r}")

        self._strategy = strategy
        self._intensity = intensity
        self._period = period
        self._auto_shutdown = auto_shutdown
        self._preload = list(preload)
        # The zygote (default) or a multiprocessing start method: "forkserver", "fork" or "spawn".
        self._ctx = (
            Zygote([*self._preload, "supervisor.process"], subreaper=subreaper)
            if context == "zygote"
            else multiprocessing.get_context(context)
        )
        self._on_event = on_event
        starter = cast(Starter, self._ctx)  # every context has a Process(); the stubs leave it out
        self._children = {spec.id: ChildProcess(spec, starter) for spec in specs}

        self._lock = threading.RLock()
        self._state = "new"  # new -> running -> stopping -> stopped (-> running again via start())
        self._running: set[str] = set()  # started, and their exit not yet handled
        self._finished: set[str] = set()  # ended and not to be restarted
        self._restart_times: collections.deque[float] = collections.deque()
        self._restarts = 0
        self._stop_requested = False

        # Self-pipe: request_stop() may only do async-signal-safe work, so it just writes a byte here.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every child in list order; a no-op if already running.

        If a child fails to start, the ones already started are stopped and RuntimeError is raised.
        """
        with self._lock:
            if self._state == "running":
                return
            if self._state != "new":  # starting again after a stop: forget the previous run
                self._stop_requested = False
                self._restart_times.clear()
                self._restarts = 0
            self._finished.clear()
            if isinstance(self._ctx, Zygote):
                self._ctx.title = _zygote_title()
                self._ctx.open()  # preload errors surface here, before any child is started
            elif self._ctx.get_start_method() == "forkserver":
                # Only effective before the (per-interpreter) forkserver is first launched.
                modules = [entry.partition(":")[0] for entry in self._preload]  # imports only
                self._ctx.set_forkserver_preload([*modules, "supervisor.frozen"])
            self._state = "running"
            atexit.register(self.stop)  # never leave children behind (they are not daemonic)
            for child in self._children.values():
                if self._state != "running":  # an on_event callback called stop()
                    break
                try:
                    self._start_child(child)
                except Exception as exc:
                    self.stop()
                    raise RuntimeError(f"child {child.id!r} failed to start: {exc}") from exc

    def run(self) -> Outcome:
        """Supervise until auto_shutdown fires, a stop is requested or restart intensity is exceeded.

        Starts the children first if needed. Whatever the reason, everything still alive is shut
        down in reverse start order before this returns.
        """
        self.start()
        reason: str | None = None
        try:
            while reason is None:
                with self._lock:
                    reason = self._step()
                    handles = [(c.sentinel, c.process) for c in self._live_children()]
                if reason is None:
                    # `handles` keeps the process objects (and so their sentinel fds) alive while waiting.
                    ready = wait([self._wake_r] + [sentinel for sentinel, _ in handles])
                    if self._wake_r in ready:
                        self._drain_wake_pipe()
        finally:
            self.stop()
        return Outcome(reason=reason, exitcodes=self._exitcodes(), restarts=self._restarts)

    def request_stop(self) -> None:
        """Ask `run` to shut down and return "stop_requested". Async-signal-safe: no locks, one write."""
        self._stop_requested = True
        self._wake()

    def stop(self) -> None:
        """Shut down now, in reverse start order; afterwards no child process is alive. Idempotent."""
        with self._lock:
            if self._state != "running":
                return
            self._state = "stopping"
            try:
                for child in reversed(self._children.values()):
                    if child.id in self._running or child.is_alive():
                        self._terminate(child)
            finally:
                for child in self._children.values():  # only does anything if the loop above was interrupted
                    child.kill()
                self._running.clear()
                if isinstance(self._ctx, Zygote):  # every child is reaped: nothing left for it to do
                    self._ctx.close()
                self._state = "stopped"
                atexit.unregister(self.stop)
            self._emit("stopped", None, None, None)
        self._wake()

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- operator interface ------------------------------------------------------------------------

    def restart_child(self, id: str) -> None:
        """Terminate one child (if alive) and start it again, regardless of its restart type."""
        with self._lock:
            child = self._child(id)
            if self._state != "running":
                raise RuntimeError(f"cannot restart {id!r}: supervisor is {self._state}")
            if id in self._running:
                self._terminate(child)
            self._emit("restarting", id, child.pid, child.exitcode)
            self._start_child(child)
        self._wake()  # run() must wait on the new sentinel

    def which_children(self) -> list[dict[str, Any]]:
        """One dict per child, in start order: id, pid (latest, even if dead), alive, restarts, exitcode."""
        with self._lock:
            return [
                {
                    "id": c.id,
                    "pid": c.pid,
                    "alive": c.is_alive(),
                    "restarts": c.restarts,
                    "exitcode": c.exitcode,
                }
                for c in self._children.values()
            ]

    def pid_of(self, id: str) -> int | None:
        """Pid of the child's live process, or None if it is not running."""
        with self._lock:
            child = self._child(id)
            return child.pid if child.is_alive() else None

    @property
    def pids(self) -> dict[str, int | None]:
        """Pid of every child's live process (None where not running), in start order."""
        with self._lock:
            return {c.id: (c.pid if c.is_alive() else None) for c in self._children.values()}

    # -- internals (called with self._lock held) ---------------------------------------------------

    def _step(self) -> str | None:
        """Handle every child that has exited; return a reason to end the run, or None to keep going."""
        if self._stop_requested or self._state != "running":
            return "stop_requested"
        to_restart, ended = self._collect_exits()
        if self._significant_exit(ended):
            return "significant_exit"
        if not self._restart(to_restart):
            return "intensity_exceeded"
        if self._state != "running":  # an on_event callback called stop()
            return "stop_requested"
        if not self._running:
            return "all_exited"
        return None

    def _collect_exits(self) -> tuple[list[ChildProcess], list[ChildProcess]]:
        """Every running child that has exited, reported: (those to restart, those ended for good)."""
        exited = [c for c in self._children.values() if c.id in self._running and not c.is_alive()]
        to_restart: list[ChildProcess] = []
        ended: list[ChildProcess] = []
        for child in exited:
            self._running.discard(child.id)
            self._emit("exited", child.id, child.pid, child.exitcode)
            if child.spec.restart_type.should_restart(child.exitcode):
                to_restart.append(child)
            else:
                self._finished.add(child.id)
                ended.append(child)
        return to_restart, ended

    def _restart(self, children: list[ChildProcess]) -> bool:
        """Restart these children as the strategy says; False once restart intensity is exceeded."""
        if children and self._strategy == "one_for_all":
            return self._restart_all(children[0])
        return all(self._restart_one(child) for child in children)

    def _significant_exit(self, ended: list[ChildProcess]) -> bool:
        """Whether auto_shutdown fires, given the children that just ended for good on their own."""
        if self._auto_shutdown == "never" or not any(c.spec.significant for c in ended):
            return False
        if self._auto_shutdown == "any_significant":
            return True
        return all(c.id in self._finished for c in self._children.values() if c.spec.significant)

    def _restart_one(self, child: ChildProcess) -> bool:
        """Start `child` again, retrying failed starts; False once restart intensity is exceeded."""
        while self._state == "running":
            if not self._allow_restart(child.id):
                return False
            self._emit("restarting", child.id, child.pid, child.exitcode)
            try:
                self._start_child(child)
                return True
            except Exception:
                log.exception("restarting child %r failed", child.id)
        return True

    def _restart_all(self, trigger: ChildProcess) -> bool:
        """one_for_all: stop every other child in reverse order, then start all but temporary ones."""
        while self._state == "running":
            if not self._allow_restart(trigger.id):
                return False
            for child in reversed(self._children.values()):
                if child.id in self._running:
                    self._terminate(child)
            try:
                for child in self._children.values():
                    if self._state != "running":
                        break
                    if child.spec.restart_type is Restart.TEMPORARY:
                        self._finished.add(child.id)  # OTP: temporary children are not restarted
                        continue
                    self._emit("restarting", child.id, child.pid, child.exitcode)
                    self._start_child(child)
                return True
            except Exception:
                log.exception("one_for_all restart after %r failed", trigger.id)
        return True

    def _allow_restart(self, id: str) -> bool:
        """Record a restart; False (and an "intensity_exceeded" event) if it exceeds the intensity."""
        now = time.monotonic()
        self._restart_times.append(now)
        while now - self._restart_times[0] > self._period:
            self._restart_times.popleft()
        if len(self._restart_times) > self._intensity:
            self._emit("intensity_exceeded", id, None, None)
            return False
        self._restarts += 1
        return True

    def _start_child(self, child: ChildProcess) -> None:
        pid = child.start()
        self._running.add(child.id)
        self._finished.discard(child.id)
        self._emit("started", child.id, pid, None)

    def _terminate(self, child: ChildProcess) -> None:
        if child.is_alive():
            self._emit("stopping", child.id, child.pid, None)
        exitcode = child.terminate(child.spec.shutdown)
        self._running.discard(child.id)
        self._emit("exited", child.id, child.pid, exitcode)

    def _live_children(self) -> list[ChildProcess]:
        return [c for c in self._children.values() if c.id in self._running]

    def _child(self, id: str) -> ChildProcess:
        try:
            return self._children[id]
        except KeyError:
            raise KeyError(f"no child with id {id!r}") from None

    def _exitcodes(self) -> dict[str, int | None]:
        with self._lock:
            return {c.id: c.exitcode for c in self._children.values()}

    def _emit(self, kind: str, child: str | None, pid: int | None, exitcode: int | None) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(Event(kind=kind, child=child, pid=pid, exitcode=exitcode, time=time.time()))
        except Exception:
            log.exception("on_event callback failed for %s event of %r", kind, child)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already wakes the loop
            os.write(self._wake_w, b"\0")

    def _drain_wake_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass


def _zygote_title() -> str:
    """The zygote is titled after the supervising process, so `ps` shows whose it is."""
    return f"{setproctitle.getproctitle()} [zygote]"


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
