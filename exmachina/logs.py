"""Per-process log files: one per neuron (and the coordinator), readable with plain `tail -f`.

Lines look like `2026-11-23 10:00:00.123456 INFO  hidden1.3  forward wired to 10 synapses`: the
microsecond stamp lets `trace` put one sample's hops in order across files.
"""

from __future__ import annotations

import logging
import logging.handlers
from datetime import datetime
from pathlib import Path

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "off": logging.CRITICAL + 1,
}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"{stamp} {record.levelname:<7} {record.name}  {record.getMessage()}"


def open_log(name: str, path: Path, level: str, max_bytes: int, backups: int) -> logging.Logger:
    """The process's logger, writing to `path` with size-based rotation."""
    log = logging.getLogger(name)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(LEVELS[level])
    if level != "off":
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        handler.setFormatter(_Formatter())
        log.addHandler(handler)
    return log


def close_log(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
