"""Per-process log files: one per neuron (and the coordinator, and the supervisor), readable with
plain `tail -f`.

Lines look like `2026-11-23 10:00:00.123456 INFO    hidden1.3  wired: 2 input synapses ...`: the
microsecond stamp lets `trace` put one sample's hops in order across files.

`Log` is not the standard `logging` machinery, on purpose. A neuron is forked from a process that
already holds `logging`, and every object a child touches is a page it copies: a record per line,
the logger's caches, the handler and its lock, a buffered text file, unique memory in every neuron.
A line here is one `os.write` to a file opened for appending, made from a few objects the process
owns. The method names are `logging.Logger`'s; the rotation is `RotatingFileHandler`'s (the file
becomes `.1`, `.1` becomes `.2`, and so on), which the tools that follow a log (`logview.py`) expect.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
OFF = ERROR + 10
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "off": OFF}
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class Log:
    """A process's log: at most `max_bytes` in `path`, then rotated into `backups` older files.
    No file at all at level OFF, or without a path (a neuron rehearsed in memory)."""

    def __init__(
        self, name: str, path: Path | None, level: int, max_bytes: int = 0, backups: int = 1
    ) -> None:
        self.name, self.path, self.max_bytes, self.backups = name, path, max_bytes, backups
        self.level = level if path is not None else OFF
        self._lock = threading.Lock()  # the coordinator's threads share its log
        self._fd, self._size = -1, 0
        self._failed = False
        if self.level < OFF:
            self._open()

    def isEnabledFor(self, level: int) -> bool:  # logging.Logger's name
        return level >= self.level

    def debug(self, message: str, *args: object) -> None:
        self._log(DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        self._log(INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._log(WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        self._log(ERROR, message, args)

    def exception(self, message: str, *args: object) -> None:
        """An error, followed by the traceback of the exception being handled."""
        if self.level <= ERROR:
            self._write(ERROR, f"{message % args if args else message}\n{traceback.format_exc().rstrip()}")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _log(self, level: int, message: str, args: tuple) -> None:
        if level >= self.level:  # formatted only when written, as logging does
            self._write(level, message % args if args else message)

    def _write(self, level: int, text: str) -> None:
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
        line = f"{stamp}.{nanos // 1000:06d} {_NAMES[level]:<7} {self.name}  {text}\n"
        data = line.encode(errors="backslashreplace")
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                os.write(self._fd, data)
                self._size += len(data)
            except OSError:  # a full disk must not stop the process, nor flood the terminal with a
                self._failed = True  # line per process: the run's own writes fail too, and say so once

    def _open(self) -> None:
        assert self.path is not None  # a log without a path is OFF and never opens
        self._fd = os.open(self.path, _APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        base = str(self.path)
        for i in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{base}.{i}"):
                os.replace(f"{base}.{i}", f"{base}.{i + 1}")
        os.replace(base, f"{base}.1")
        self._open()


def open_log(name: str, path: Path, level: str, max_bytes: int, backups: int) -> Log:
    """The process's log, writing to `path` with size-based rotation."""
    return Log(name, path, LEVELS[level], max_bytes, backups)


def close_log(log: Log) -> None:
    log.close()
