"""Zygote: one preloaded process that forks every child on the supervisor's request.

The forkserver pattern, kept lean. multiprocessing's forkserver does the same job, but each child it
forks then runs the spawn machinery before its target (preparation data, sys.path/argv/cwd fix-ups, a
second unpickling, stdin reopened, after-fork hooks), which costs every child unique memory and CPU.
A zygote child reads its pickled target from a pipe and calls it.

The wire, one request at a time (the supervisor holds a lock):
  supervisor -> zygote   "F" (fork), with two descriptors attached (SCM_RIGHTS): the read end of a
                         payload pipe and the write end of an exit pipe;
  zygote -> supervisor   the new child's pid (8 bytes);
  supervisor -> child    the pickled (cwd, sys.path, target, args) through the payload pipe;
  zygote -> supervisor   the child's exit code (4 bytes) through its exit pipe when the zygote reaps
                         it. The read end of that pipe is the child's sentinel: readable once it ended.
  supervisor -> zygote   "Q" (quit) before the supervisor closes the control socket: the zygote exits
                         and leaves its children be.
The zygote is also the children's lifeline: if the control socket closes without a "Q", the
supervisor died, and the zygote ends every child it forked (SIGTERM, then SIGKILL after the grace)
before it exits. If the zygote itself is killed, its children live on (no false exits), and the next
zygote adopts them: "A" with a pidfd of each, to end them too should the supervisor die. The
supervisor may be their subreaper meanwhile (`subreaper=True`, PR_SET_CHILD_SUBREAPER): an orphan
then comes to it, not to init, so that it can still read how that child exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .lifeline import ORPHAN_GRACE_S

FORK, ADOPT, QUIT = b"F", b"A", b"Q"
PID = struct.Struct("q")
EXIT_CODE = struct.Struct("i")
FRAME = struct.Struct("I")
#: Exit code reported for a child whose zygote vanished before reaping it (as multiprocessing does).
UNKNOWN_EXIT = 255
# The zygote answers at once unless the machine is swamped; past this, assume it is stuck.
REPLY_TIMEOUT_S = 120.0

_ROOT = str(Path(__file__).resolve().parent.parent)  # where `supervisor` is importable from


class ZygoteError(RuntimeError):
    """The zygote could not be started, or stopped answering."""


class Zygote:
    """The supervisor's handle on its zygote: started on `open`, asked for children by `Process`.

    `preload`: modules the zygote imports before forking anything, so children share them; an entry
    "module:function" also calls that function there once (a warm-up).

    Offers the part of a multiprocessing context that `ChildProcess` uses, so the two are
    interchangeable (`Supervisor(context="zygote" | "forkserver" | "fork" | "spawn")`).
    """

    def __init__(
        self, preload: Sequence[str] = (), title: str | None = None, subreaper: bool = False
    ) -> None:
        self.preload = list(preload)
        self.title = title
        # This process adopts the children of a zygote that died, to read their exit codes: for a
        # process that only supervises, as any orphan of any descendant then comes to it while open.
        self.subreaper = subreaper
        self._proc: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._started_with: tuple[str, list[str]] | None = None  # the zygote's cwd and sys.path
        self._lock = threading.Lock()

    def Process(  # multiprocessing's name
        self, target: Callable[..., Any], args: tuple = (), name: str = "", daemon: bool = False
    ) -> ZygoteProcess:
        return ZygoteProcess(self, target, args)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def open(self) -> None:
        """Start the zygote and wait until it has imported `preload`; a no-op while it runs."""
        with self._lock:
            if self.subreaper:
                _subreaper(True)
            try:
                self._open()
            except BaseException:
                self._reaper_off()
                raise

    def _open(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        boot = (
            f"import sys; sys.path.insert(0, {_ROOT!r}); "
            f"from supervisor.zygote import main; main({theirs.fileno()})"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", boot], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        self._control = ours
        ours.settimeout(REPLY_TIMEOUT_S)
        self._started_with = (os.getcwd(), list(sys.path))
        setup = {"sys_path": sys.path, "preload": self.preload, "title": self.title}
        try:
            _send_frame(ours, pickle.dumps(setup))
            reply = _recv_frame(ours).decode()
        except (OSError, ZygoteError) as exc:
            self._close()
            raise ZygoteError(f"the zygote did not start: {exc}") from None
        if reply != "ok":
            self._close()
            raise ZygoteError(f"the zygote could not preload {reply}")

    def spawn(self, target: Callable[..., Any], args: tuple) -> tuple[int, int, int]:
        """Fork a child that runs `target(*args)`; returns its pid, its sentinel (a descriptor) and
        the zygote's pid."""
        self.open()
        moved: tuple[str, list[str]] | None = (os.getcwd(), list(sys.path))
        if moved == self._started_with:  # the usual case: the child need not change either
            moved = None
        cwd, path = moved or (None, None)
        payload = pickle.dumps((cwd, path, target, args))  # unpicklable targets fail here, before a fork
        with self._lock:
            assert self._control is not None
            data_r, data_w = os.pipe()
            exit_r, exit_w = os.pipe()
            pid = None
            try:
                try:
                    socket.send_fds(self._control, [FORK], [data_r, exit_w])
                    (pid,) = PID.unpack(_recv_exactly(self._control, PID.size))
                finally:
                    os.close(data_r)
                    os.close(exit_w)
                with open(data_w, "wb", closefd=False) as pipe:
                    pipe.write(payload)
            except (OSError, ZygoteError) as exc:
                os.close(exit_r)
                failed = "did not fork" if pid is None else f"forked pid {pid}, which did not take its start"
                raise ZygoteError(f"the zygote (pid {self.pid}) {failed}: {exc}") from None
            finally:
                os.close(data_w)
            assert self._proc is not None
            return pid, exit_r, self._proc.pid

    def adopt(self, pidfd: int, vanished: int) -> None:
        """Hand a live child of zygote `vanished` (as a pidfd) to a new one, its lifeline from now on.
        Not after `close`: a supervisor that closed its zygote on purpose is stopping."""
        with self._lock:
            if self._proc is None:
                return
            if self._proc.pid == vanished:  # it is exiting, maybe not yet a zombie that `poll` sees
                self._close()  # (a dying process closes its descriptors first): reap it
            self._open()
            assert self._control is not None
            socket.send_fds(self._control, [ADOPT], [pidfd])

    def close(self) -> None:
        """End the zygote (its children are not touched) and reap it."""
        with self._lock:
            self._close()
            self._reaper_off()

    def _reaper_off(self) -> None:
        if self.subreaper:
            _subreaper(False)

    def _close(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.sendall(QUIT)  # without it, the zygote would take us for dead
            self._control.close()  # the zygote's cue to exit
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


class ZygoteProcess:
    """One child forked by a zygote, with the `multiprocessing.Process` calls the supervisor makes."""

    def __init__(self, zygote: Zygote, target: Callable[..., Any], args: tuple) -> None:
        self._zygote, self._target, self._args = zygote, target, args
        self.pid: int | None = None
        self.sentinel: int | None = None
        self._exitcode: int | None = None
        self._forked_by = 0  # the zygote's pid
        self._orphaned = False  # watched through a pidfd since its zygote vanished

    def start(self) -> None:
        if self.pid is not None:
            raise RuntimeError("a process can only be started once")
        self.pid, self.sentinel, self._forked_by = self._zygote.spawn(self._target, self._args)
        self._finalizer = weakref.finalize(self, _close_quietly, self.sentinel)

    @property
    def exitcode(self) -> int | None:
        """The exit code once the zygote has reaped the child (negative: killed by that signal)."""
        if self._exitcode is None and self.sentinel is not None and wait([self.sentinel], 0):
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(self.sentinel, EXIT_CODE.size)
            if len(data) == EXIT_CODE.size:
                self._exitcode = EXIT_CODE.unpack(data)[0]
            elif self._orphaned:
                self._exitcode = _reap_orphan(self.sentinel)
            elif not self._watch_orphan():
                self._exitcode = UNKNOWN_EXIT
        return self._exitcode

    def _watch_orphan(self) -> bool:
        """The zygote vanished (its end of the exit pipe closed unsent) while this child may live on:
        watch the child itself through a pidfd, readable once it ends. False if it has ended."""
        if self.pid is None or self.sentinel is None:
            return False
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # gone already, or no pidfd on this system
            return False
        os.close(self.sentinel)
        self.sentinel, self._orphaned = pidfd, True
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_quietly, pidfd)
        with contextlib.suppress(OSError, ZygoteError):  # then it is ended by the supervisor's stop only
            self._zygote.adopt(pidfd, vanished=self._forked_by)
        return True

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.sentinel is not None and self._exitcode is None:
            wait([self.sentinel], timeout)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.pid is not None and self.exitcode is None:  # never signal a pid that may be reused
            os.kill(self.pid, signum)


PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    """Be (or stop being) the subreaper of every descendant: a dead zygote's children then come to
    this process, which can wait for them. Linux only; elsewhere their exit codes are unknown."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap_orphan(pidfd: int) -> int:
    """The exit code of an ended child of a vanished zygote, reparented to this (sub)reaper."""
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except (AttributeError, OSError):  # not ours to wait for (no subreaper), or no waitid on pidfds
        return UNKNOWN_EXIT
    if result is None:
        return UNKNOWN_EXIT
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


# -- the zygote process -----------------------------------------------------------------------------


def main(fd: int) -> None:
    """The zygote: preload, freeze, then fork children on request until the control socket closes."""
    control = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so that SIGCHLD writes to wake_w
    setup = pickle.loads(_recv_frame(control))
    sys.path[:] = setup["sys_path"]
    failure = _preload(setup["preload"])
    if failure is not None:  # reported to the supervisor, which raises it
        _send_frame(control, failure.encode())
        return
    if setup["title"]:
        import setproctitle

        setproctitle.setproctitle(setup["title"])  # also moves environ once, here, not in every child
    # Children share this process's memory copy-on-write. The cyclic collector writes to every object it
    # walks, which would copy each page of the preloaded modules into each child: frozen ones it skips.
    gc.freeze()
    _send_frame(control, b"ok")
    with selectors.DefaultSelector() as selector:
        _Forker(control, selector, wake_r, wake_w).serve()


def _preload(entries: list[str]) -> str | None:
    """Import each module (and run its warm-up function, "module:function"); what failed, if any."""
    for entry in entries:
        name, _, function = entry.partition(":")
        try:
            module = importlib.import_module(name)
            if function:  # a warm-up, run once here rather than in every child
                getattr(module, function)()
        except BaseException as exc:
            return f"{entry!r}: {type(exc).__name__}: {exc}"
    return None


class _Forker:
    """The zygote's loop: fork on "F", watch adopted children on "A", reap children as they end, and
    end them all if the supervisor goes away without a "Q"."""

    def __init__(
        self, control: socket.socket, selector: selectors.DefaultSelector, wake_r: int, wake_w: int
    ) -> None:
        self.control, self.selector, self.wake_r, self.wake_w = control, selector, wake_r, wake_w
        self.exits: dict[int, int] = {}  # live child pid -> write end of its exit pipe
        self.adopted: set[int] = set()  # pidfds of live children of a previous zygote
        selector.register(control, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)

    def serve(self) -> None:
        while True:
            ready = {key.fileobj for key, _ in self.selector.select()}
            if self.wake_r in ready:
                _drain(self.wake_r)
                _reap(self.exits)
            for pidfd in self.adopted & ready:  # an adopted child ended (its own parent reaps it)
                self.selector.unregister(pidfd)
                self.adopted.discard(pidfd)
                os.close(pidfd)
            if self.control in ready and not self._request():
                return

    def _request(self) -> bool:
        """Answer one request from the supervisor; False once there will be no more."""
        try:
            message, fds, _, _ = socket.recv_fds(self.control, 1, 2)
        except OSError:  # reset: the supervisor died with our reply unread
            message, fds = b"", []
        if message == ADOPT:
            self.adopted.update(fds)
            for pidfd in fds:
                self.selector.register(pidfd, selectors.EVENT_READ)
            return True
        if message != FORK:
            if message != QUIT:  # the socket closed unasked: the supervisor died
                _end_orphans(self.exits, self.adopted, self.wake_r)
            return False
        return self._fork(*fds)

    def _fork(self, data_r: int, exit_w: int) -> bool:
        """Fork a child that reads its target from `data_r`; False if the supervisor died meanwhile."""
        pid = os.fork()
        if pid == 0:
            zygote_fds = [
                self.control.fileno(),
                self.selector.fileno(),
                self.wake_r,
                self.wake_w,
                *self.adopted,
            ]
            _child(data_r, [*zygote_fds, exit_w, *self.exits.values()])
        self.exits[pid] = exit_w
        os.close(data_r)
        try:
            self.control.sendall(PID.pack(pid))
        except OSError:  # the supervisor died
            _end_orphans(self.exits, self.adopted, self.wake_r)
            return False
        return True


def _child(data_r: int, inherited: list[int]) -> None:
    """In a fresh fork: shed the zygote's descriptors and signals, read the target, run it, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for fd in inherited:
            os.close(fd)
        with open(data_r, "rb") as pipe:
            cwd, path, target, args = pickle.load(pipe)
        if cwd is not None:  # the supervisor moved since the zygote started
            os.chdir(cwd)
            sys.path[:] = path
        from .process import _exit_code

        try:
            target(*args)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        for thread in threading.enumerate():  # as the interpreter would at exit
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _end_orphans(exits: dict[int, int], adopted: set[int], wake_r: int) -> None:
    """The supervisor died: end its children as their lifeline would, SIGTERM first (their handlers
    clean up), SIGKILL for those still running after the grace."""
    for signum, wait_s in ((signal.SIGTERM, ORPHAN_GRACE_S), (signal.SIGKILL, 5.0)):
        for pid in exits:  # not reaped yet, so the pid cannot have been reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        for pidfd in adopted:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signum)
        deadline = time.monotonic() + wait_s
        while True:
            _reap(exits)
            left = deadline - time.monotonic()
            if not (exits or adopted) or left <= 0:
                break
            ready, _, _ = select.select([wake_r, *adopted], [], [], left)
            _drain(wake_r)
            for pidfd in adopted.intersection(ready):
                adopted.discard(pidfd)
                os.close(pidfd)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _reap(exits: dict[int, int]) -> None:
    """Tell the supervisor how each ended child exited, through that child's exit pipe."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exit_w = exits.pop(pid, None)
        if exit_w is not None:
            with contextlib.suppress(OSError):  # the supervisor may have dropped the process already
                os.write(exit_w, EXIT_CODE.pack(os.waitstatus_to_exitcode(status)))
            os.close(exit_w)


# -- framing ------------------------------------------------------------------------------------------


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(FRAME.pack(len(data)) + data)


def _recv_frame(sock: socket.socket) -> bytes:
    (size,) = FRAME.unpack(_recv_exactly(sock, FRAME.size))
    return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ZygoteError("the zygote closed its socket")
        data += chunk
    return data


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
