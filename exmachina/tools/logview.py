"""Reading a run's log files: parse, merge in time order, follow like `tail -f` across rotation.

Every process of a run writes `neurons/<id>.log` (see `logs.py`); a log's rotation renames a
full `x.log` to `x.log.1` (and `x.log.1` to `x.log.2` ...), so one process's log, oldest first, is
`x.log.N ... x.log.1 x.log`. Lines start with a fixed-width microsecond stamp, so sorting by the
stamp's text is sorting by time, and several logs merge without parsing a single date.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} ")
STAMP_WIDTH = 26
RANKS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
CHUNK = 1 << 20


@dataclass(slots=True)
class Record:
    """One log record: a stamped line, plus any unstamped lines after it (a traceback)."""

    stamp: str  # "2026-11-23 10:00:00.123456", local time, sorts as text
    level: str
    name: str  # the process that wrote it: a neuron id, "coordinator" or "supervisor"
    message: str
    text: str  # the line(s) as written

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.stamp)

    @property
    def rank(self) -> int:
        return RANKS.get(self.level, 0)

    def as_json(self) -> str:
        return json.dumps(
            {
                "time": self.time.isoformat() if self.stamp else None,
                "level": self.level,
                "neuron": self.name,
                "message": self.message,
            }
        )


def parse(line: str) -> Record | None:
    """A stamped line as a Record; None for a line that does not start with a stamp."""
    if not _STAMP.match(line):
        return None
    level, _, rest = line[STAMP_WIDTH + 1 :].partition(" ")
    name, _, message = rest.lstrip(" ").partition("  ")
    return Record(line[:STAMP_WIDTH], level, name, message, line)


def records(lines: Iterable[bytes], name: str, stamp: str = "") -> Iterator[Record]:
    """Records from raw lines; an unstamped line joins the record before it (or stands alone, carrying
    `stamp`, the last one seen, when it opens the input)."""
    pending: Record | None = None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        record = parse(line) if raw[:1].isdigit() else None
        if record is None:
            if pending is None:
                pending = Record(stamp, "", name, line, line)
            else:
                pending.message += "\n" + line
                pending.text += "\n" + line
            continue
        if pending is not None:
            yield pending
        pending = record
    if pending is not None:
        yield pending


def rotated(base: Path) -> list[Path]:
    """The rotated files of one log, oldest first: x.log.3, x.log.2, x.log.1."""
    found = []
    for path in base.parent.glob(base.name + ".*"):
        suffix = path.name[len(base.name) + 1 :]
        if suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found, reverse=True)]


def _open(path: Path) -> IO[bytes] | None:
    """The file open for reading, or None if it is not there (any more)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _lines(fh: IO[bytes], end: int | None = None) -> Iterator[bytes]:
    """Complete lines of an open file from where it stands, up to byte `end` (None: its end)."""
    left = end - fh.tell() if end is not None else None
    rest = b""
    while left is None or left > 0:
        chunk = fh.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            break
        if left is not None:
            left -= len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


class Source:
    """One process's log: what is there now (rotated files first), then what it writes next."""

    def __init__(self, base: Path, name: str | None = None) -> None:
        self.base = base
        self.name = name or base.name.removesuffix(".log")
        self.inode: int | None = None  # of the file being followed, and how far it has been read
        self.offset = 0
        self.partial = b""
        self.stamp = ""

    def backlog(self, level: int = 0) -> Iterator[Record]:
        """Everything written so far, oldest first. The live file is pinned (opened) at once, so a
        rotation while the caller reads the backlog loses nothing that `poll` will not bring."""
        live = _open(self.base)
        if live is not None:
            st = os.fstat(live.fileno())
            self.inode, self.offset = st.st_ino, st.st_size
        return self._backlog(live, self.offset, level)

    def _backlog(self, live: IO[bytes] | None, end: int, level: int) -> Iterator[Record]:
        def lines() -> Iterator[bytes]:
            for path in rotated(self.base):
                try:
                    with open(path, "rb") as fh:
                        yield from _lines(fh)
                except FileNotFoundError:  # rotated away while we read
                    continue
            if live is not None:
                with live:
                    yield from _lines(live, end)

        for record in records(lines(), self.name):
            self.stamp = record.stamp or self.stamp
            if record.rank >= level:
                yield record

    def grep(self, needle: bytes) -> Iterator[Record]:
        """The stamped lines (of every file of this log, oldest first) that contain `needle`: a fast
        scan of a large debug log, without parsing the lines that do not match."""
        for path in [*rotated(self.base), self.base]:
            fh = _open(path)
            if fh is None:
                continue
            with fh:
                for raw in _lines(fh):
                    if needle in raw:
                        record = parse(raw.decode("utf-8", "replace"))
                        if record is not None:
                            yield record

    def poll(self, level: int = 0) -> list[Record]:
        """Records written since the last call (or the backlog), following the file across rotation."""
        chunks: list[bytes] = []
        fh = _open(self.base)
        try:
            st = os.fstat(fh.fileno()) if fh is not None else None
            if self.inode is not None and (st is None or st.st_ino != self.inode):
                chunks.extend(self._rotated_since())
                self.inode, self.offset = None, 0
            if fh is not None and st is not None:
                if self.inode is None:
                    self.inode, self.offset = st.st_ino, 0
                elif st.st_size < self.offset:  # truncated in place
                    self.offset = 0
                fh.seek(self.offset)
                data = fh.read()
                self.offset += len(data)
                chunks.append(data)
        finally:
            if fh is not None:
                fh.close()
        data = self.partial + b"".join(chunks)
        complete, _, self.partial = data.rpartition(b"\n")
        if not complete:
            return []
        found = list(records(complete.split(b"\n"), self.name, self.stamp))
        if found:
            self.stamp = found[-1].stamp or self.stamp
        return [r for r in found if r.rank >= level]

    def _rotated_since(self) -> list[bytes]:
        """The followed file was renamed away: the rest of it, and any file rotated after it."""
        files = rotated(self.base)  # oldest first
        for i, path in enumerate(files):
            fh = _open(path)
            if fh is None:
                continue
            with fh:
                if os.fstat(fh.fileno()).st_ino != self.inode:
                    continue
                fh.seek(self.offset)
                out = [fh.read()]
            for newer in files[i + 1 :]:
                try:
                    out.append(newer.read_bytes())
                except FileNotFoundError:
                    continue
            return out
        return []  # rotated out of existence before we came back: those lines are lost


def merge(streams: Iterable[Iterable[Record]]) -> Iterator[Record]:
    """Several logs, each already in time order, as one stream in time order."""
    return heapq.merge(*streams, key=lambda r: r.stamp)


def follow(
    sources: list[Source],
    emit: Callable[[list[Record]], None],
    finished: Callable[[], bool],
    level: int = 0,
    interval: float = 0.1,
    quiet: float = 1.0,
    grace: float = 10.0,
) -> None:
    """Poll every source until `finished()` is true and the logs have been quiet for `quiet` seconds
    (processes write their last lines after the run's summary), or `grace` seconds have passed."""
    done_at: float | None = None
    last_news = time.monotonic()
    while True:
        fresh = [r for source in sources for r in source.poll(level)]
        now = time.monotonic()
        if fresh:
            fresh.sort(key=lambda r: r.stamp)
            emit(fresh)
            last_news = now
        if done_at is None and finished():
            done_at = now
        if done_at is not None and (now - last_news >= quiet or now - done_at >= grace):
            return
        time.sleep(interval)
