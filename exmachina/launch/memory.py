"""Peak memory of the run's whole process tree, for its summary."""

from __future__ import annotations

import contextlib
import threading

import psutil


class PeakMemory:
    """Peak memory of the whole process tree, sampled every few seconds, as the sum of PSS: each
    shared page (numpy, pyzmq, inherited from the forkserver) counted once, not once per process.
    Each reading walks every process's page tables, so bigger trees are read less often."""

    def __init__(self, interval: float = 2.0) -> None:
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error, OSError, ValueError):
                    total += pss(proc)
            self.peak = max(self.peak, total)
            if self._stop.wait(self.interval):
                return


def pss(proc: psutil.Process) -> int:
    """PSS from smaps_rollup: the kernel sums it, far cheaper than psutil's walk of the full smaps,
    which matters with hundreds of neurons read every few seconds."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return proc.memory_full_info().pss
