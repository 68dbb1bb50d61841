"""One supervised OS process: a thin, explicit wrapper around `multiprocessing.Process`.

The wrapper survives restarts (one `ChildProcess` per child id, a new OS process per start), so the
supervisor can keep per-child bookkeeping such as the restart count in one place.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, Protocol

# Imported here, not in the child: the zygote preloads this module, so every child shares the
# import instead of making its own (0.1-0.3 MB of unique memory per child, measured on XOR).
import setproctitle

from .lifeline import watch_parent
from .spec import ChildSpec
from .zygote import Zygote


class OsProcess(Protocol):
    """What the supervisor needs of one started process: a `multiprocessing.Process` or a
    `ZygoteProcess`, which has the same shape."""

    @property
    def pid(self) -> int | None: ...
    @property
    def sentinel(self) -> Any: ...
    @property
    def exitcode(self) -> int | None: ...
    def start(self) -> None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class Starter(Protocol):
    """Where processes come from: a multiprocessing context or a `Zygote`."""

    def Process(self, target: Callable[..., Any], args: tuple, name: str, daemon: bool) -> OsProcess: ...


def _bootstrap(spec: ChildSpec, supervisor_pid: int | None) -> None:
    """Entry point of every child process: prepare the process, then run the target. With a
    `supervisor_pid`, a lifeline thread ends the child once that process is gone.

    Exit status: 0 when the target returns, the code of a `SystemExit`, 1 for any other exception
    (whose traceback goes to stderr).
    """
    if spec.title:
        setproctitle.setproctitle(spec.title)
    # Ctrl-C in a terminal reaches the whole process group; the supervisor decides how children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Start from the default so that SIGTERM ends the child unless the target installs its own handler.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if supervisor_pid is not None:
        watch_parent(supervisor_pid)
    try:
        spec.target(*spec.args, **spec.kwargs)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # like the interpreter: sys.exit("message") prints it and exits 1
    return 1


class ChildProcess:
    """The current OS process of one child, plus how often it has been restarted."""

    def __init__(self, spec: ChildSpec, ctx: Starter) -> None:
        self.spec = spec
        self._ctx = ctx
        self._proc: OsProcess | None = None
        self.restarts = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def process(self) -> OsProcess | None:
        """The underlying `multiprocessing` process of the latest start (None before the first)."""
        return self._proc

    @property
    def pid(self) -> int | None:
        """Pid of the latest process, alive or not; None before the first start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def sentinel(self) -> int:
        """File descriptor that becomes readable when the current process ends."""
        if self._proc is None:
            raise RuntimeError(f"child {self.id!r} has not been started")
        return self._proc.sentinel

    @property
    def exitcode(self) -> int | None:
        """Exit code of the latest process; None while it runs. Negative means killed by that signal."""
        return self._proc.exitcode if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> int:
        """Start a new OS process for this child and return its pid.

        The previous process object is only dropped, not closed: another thread may still be waiting
        on its sentinel, and garbage collection closes it once nobody holds it.
        """
        if self.is_alive():
            raise RuntimeError(f"child {self.id!r} is already running (pid {self.pid})")
        # A zygote ends its children itself if the supervisor dies; other contexts need a lifeline.
        lifeline = None if isinstance(self._ctx, Zygote) else os.getpid()
        proc = self._ctx.Process(
            target=_bootstrap, args=(self.spec, lifeline), name=self.spec.id, daemon=False
        )
        proc.start()
        # multiprocessing remembers every started process in a module-level set and polls each one
        # (a fresh selector per child) at every later start: quadratic, seconds of the supervisor's
        # CPU for a thousand children. The supervisor reaps its own children through their sentinels.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        if self._proc is not None:
            self.restarts += 1
        self._proc = proc
        assert proc.pid is not None  # a started process has one
        return proc.pid

    def terminate(self, timeout: float) -> int | None:
        """Stop the process: SIGTERM, wait up to `timeout` seconds, then SIGKILL; return its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            proc.join(timeout)
            if proc.exitcode is None:
                self.kill()
        return proc.exitcode

    def kill(self) -> None:
        """SIGKILL the process and wait for it."""
        proc = self._proc
        if proc is not None and proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.join()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"exitcode={self.exitcode}"
        return f"<ChildProcess {self.id!r} pid={self.pid} {state} restarts={self.restarts}>"
