"""A supervisor the bench started, and every process under it: CPU time read across the tree, and
a stop that leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

STOP_GRACE_S = 20.0  # SIGTERM to SIGKILL: the supervisor stops its children one by one, so this
STOP_PER_PROCESS_S = 0.05  # ... plus this per process of the tree (a busy machine makes each slow)


class Tree:
    """A supervisor started by the bench, and every process under it.

    psutil cannot read a process once it is reaped, so each pid keeps the last CPU time read from it:
    the tree's total is the sum of those (user + system, all threads). Pids are remembered to make
    sure that none outlives the run."""

    def __init__(
        self,
        command: list[str],
        cwd: Path,
        env: dict,
        cpus: set[int] | None = None,
        grace: float = STOP_GRACE_S,
    ) -> None:
        self.grace = grace
        self.started = time.monotonic()
        self.launched_at = time.time()
        self.stdout = open(cwd / "stdout.txt", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.root = psutil.Process(self.proc.pid)
        self.procs: dict[int, psutil.Process] = {}
        self.cpu: dict[int, float] = {}
        self.last_read = 0.0

    def members(self) -> list[psutil.Process]:
        """The live tree now (remembered for CPU totals and for the final check)."""
        try:
            found = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            found = []
        for proc in found:
            self.procs.setdefault(proc.pid, proc)
        return found

    def cpu_seconds(self) -> float:
        self.members()
        for pid, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self.cpu[pid] = times.user + times.system
        self.last_read = time.monotonic()
        return sum(self.cpu.values())

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its children in order and removes their sockets); past the
        grace, SIGKILL the whole group and every process ever seen in the tree."""
        if self.running():
            self.members()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.members()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self, wait: float = 5.0) -> list[int]:
        """After the supervisor is gone: give the rest of the tree a moment to exit, then kill what is
        left by pid, including any process of its group never seen in the tree (one started just
        before a timeout). Returns the pids that had to be killed (a leak worth reporting)."""
        self.stop()
        deadline = time.monotonic() + wait
        while True:
            left = [p for p in [*self.procs.values(), *_group(self.proc.pid)] if _alive(p)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.stdout.close()
        return sorted({p.pid for p in left})

    def output(self) -> str:
        return Path(self.stdout.name).read_text(errors="replace")


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (the supervisor's session: it may be gone already)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
