"""Child targets for tests/test_supervisor.py.

They live in an importable module (not the test file) so that zygote/forkserver/spawn children can
unpickle them by reference.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _mark_ready(ready_dir: str | None, name: str | None) -> None:
    """Tell the test this child is set up (handlers installed): create `<ready_dir>/<name>.<pid>`."""
    if ready_dir is not None:
        Path(ready_dir, f"{name}.{os.getpid()}").touch()


def sleeper(
    name: str | None = None,
    ready_dir: str | None = None,
    log_path: str | None = None,
    ignore_term: bool = False,
) -> None:
    """Run until stopped. On SIGTERM: append `name` to `log_path` and exit 0, or ignore it if asked."""
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif log_path is not None:

        def on_term(signum: int, frame: object) -> None:
            with open(log_path, "a") as f:
                f.write(f"{name}\n")
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
    _mark_ready(ready_dir, name)
    while True:
        time.sleep(3600)


def crash_once(marker: str, then_exit: bool = False) -> None:
    """Exit 1 on the first run (creating `marker`); later runs exit 0 or sleep, per `then_exit`."""
    if not os.path.exists(marker):
        Path(marker).touch()
        sys.exit(1)
    if then_exit:
        return
    sleeper()


def exit_with(code: int, delay: float = 0.0) -> None:
    """Exit with `code` after `delay` seconds."""
    time.sleep(delay)
    sys.exit(code)


def raise_error() -> None:
    raise RuntimeError("deliberate failure in a test child")


def return_normally() -> None:
    return None


def exit_when_file_exists(path: str) -> None:
    """Exit 0 once `path` exists, so a test decides exactly when this child ends."""
    while not os.path.exists(path):
        time.sleep(0.02)


WARMED_IN: int | None = None  # the pid of the process that ran `warm_up`


def warm_up() -> None:
    """A preload warm-up ("tests.supervisor_children:warm_up"): records where it ran."""
    global WARMED_IN
    WARMED_IN = os.getpid()


def report_warm_up(path: str) -> None:
    """Write where `warm_up` ran, as this child inherited it (empty if it never ran here)."""
    Path(path).write_text("" if WARMED_IN is None else str(WARMED_IN))
