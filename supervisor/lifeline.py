"""Lifeline: a child process ends itself when its supervisor dies.

A supervisor that is SIGKILLed gets no chance to stop its children, and with the forkserver start
method they are not even its direct children, so nothing else would reap them. Each child therefore
watches the supervisor's pid and, when it disappears, terminates itself: first SIGTERM (so the
target's own handler can clean up), then a hard `os._exit` after a grace period.

Children of a zygote (the default) need no thread of their own: the zygote notices the supervisor's
death and ends them the same way (see `supervisor.zygote`), sparing each child 0.2-0.4 MB of memory.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

#: Exit status of a child that had to be killed by its lifeline after the grace period.
LIFELINE_EXIT_CODE = 70

#: Seconds from SIGTERM to the hard end of an orphaned child.
ORPHAN_GRACE_S = 2.0

_POLL_INTERVAL = 1.0


def watch_parent(pid: int, grace: float = ORPHAN_GRACE_S) -> None:
    """Start a daemon thread that ends this process once process `pid` has exited."""
    thread = threading.Thread(target=_watch, args=(pid, grace), name="supervisor-lifeline", daemon=True)
    thread.start()


def _watch(pid: int, grace: float) -> None:
    _wait_for_exit(pid)
    _end_self(grace)


def _wait_for_exit(pid: int) -> None:
    """Block until `pid` has exited: on a pidfd when the kernel offers one, else by polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    except (AttributeError, OSError):
        _poll_until_gone(pid)  # no pidfd_open (old kernel, non-Linux, seccomp)
        return
    try:
        # A pidfd becomes readable when the process exits (zombies included); select retries on EINTR.
        while not select.select([fd], [], [])[0]:
            pass
    finally:
        os.close(fd)


def _poll_until_gone(pid: int) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while True:
        time.sleep(_POLL_INTERVAL)
        try:
            # is_running() also compares creation times, so a recycled pid counts as gone.
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return


def _end_self(grace: float) -> None:
    # Signal the main thread itself, not the process: a process-directed signal may be delivered to
    # this thread, which would leave the main thread blocked in a system call and the handler unrun.
    try:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    except (OSError, TypeError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(LIFELINE_EXIT_CODE)
