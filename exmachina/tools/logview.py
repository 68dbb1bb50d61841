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
import resource
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
_TRIES = 100  # listings of a log that a writer keeps rotating, before going on with what is there


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


def _listing(base: Path) -> list[tuple[int, Path]]:
    """(inode, path) of every file of one log, oldest first."""
    found = []
    for path in [*rotated(base), base]:
        try:
            found.append((path.stat().st_ino, path))
        except FileNotFoundError:  # renamed or removed since the directory was read
            continue
    return found


def _snapshot(base: Path) -> list[tuple[int, Path]]:
    """The files of one log as they stood at one moment: two listings in a row that agree. Files only
    move up the suffixes, so a name that shows one file in both listings held it in between; and at
    every moment, even halfway through a rotation, suffix order is age order."""
    listing = _listing(base)
    for _ in range(_TRIES):
        again = _listing(base)
        if again == listing:
            break
        listing = again
    return listing


def _read(fh: IO[bytes]) -> Iterator[bytes]:
    """An open file from where it stands to its end, in pieces."""
    while chunk := fh.read(CHUNK):
        yield chunk


class Source:
    """One process's log read as one stream, oldest line first, across its rotated files: a cursor
    that holds the file it is in open, as `tail -F` does, so a rotation (or several, or one that
    removes the file) never takes the lines it has not read yet."""

    def __init__(self, base: Path, name: str | None = None) -> None:
        self.base = base
        self.name = name or base.name.removesuffix(".log")
        self.partial = b""  # an unfinished last line, completed by the next read
        self.stamp = ""  # of the last record read: an unstamped line after it carries it
        self._fh: IO[bytes] | None = None  # the file the cursor is in

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def backlog(self, level: int = 0, whole: bool = True) -> Iterator[Record]:
        """Everything written so far, oldest first. A follower passes `whole=False`: an unfinished
        last line then waits for `poll` to bring the rest of it."""

        def lines() -> Iterator[bytes]:
            yield from self._lines()
            if whole and self.partial:
                yield self.partial
                self.partial = b""

        for record in records(lines(), self.name):
            self.stamp = record.stamp or self.stamp
            if record.rank >= level:
                yield record

    def poll(self, level: int = 0) -> list[Record]:
        """Records written since the last call (or the backlog), following the file across rotation."""
        found = list(records(self._lines(), self.name, self.stamp))
        if found:
            self.stamp = found[-1].stamp or self.stamp
        return [r for r in found if r.rank >= level]

    def grep(self, needle: bytes) -> Iterator[Record]:
        """The stamped lines (of every file of this log, oldest first) that contain `needle`: a fast
        scan of a large debug log, without parsing the lines that do not match."""
        try:
            for raw in self._lines():
                if needle in raw:
                    record = parse(raw.decode("utf-8", "replace"))
                    if record is not None:
                        yield record
        finally:
            self.close()

    def _lines(self) -> Iterator[bytes]:
        """Complete lines from the cursor to what is written now; an unfinished last one waits in
        `partial`."""
        for chunk in self._chunks():
            lines = (self.partial + chunk).split(b"\n")
            self.partial = lines.pop()
            yield from lines

    def _chunks(self) -> Iterator[bytes]:
        """What was written since the cursor, in pieces, on across every rotation since."""
        if self._fh is None and not self._advance():
            return  # no file yet
        while True:
            fh = self._fh
            assert fh is not None
            if os.fstat(fh.fileno()).st_size < fh.tell():  # truncated in place
                fh.seek(0)
            yield from _read(fh)
            if self._is_live(fh):
                return
            yield from _read(fh)  # renamed away: the writer has closed it, so this is its end
            if not self._advance():
                return  # its successor is not there yet: the next read goes on from here

    def _is_live(self, fh: IO[bytes]) -> bool:
        """Whether the log's own name is still the file the cursor is in."""
        try:
            return self.base.stat().st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:  # halfway through a rotation
            return False

    def _advance(self) -> bool:
        """Move the cursor to the start of the next file (the oldest, when it is in none); False when
        there is none yet. The file left is closed only once the next one is open, so that its inode
        cannot be taken by a new file meanwhile."""
        current = os.fstat(self._fh.fileno()).st_ino if self._fh is not None else None
        for _ in range(_TRIES):
            files = _snapshot(self.base)
            inodes = [inode for inode, _ in files]
            # a file no longer listed was rotated out of existence: every file listed is newer
            newer = files[inodes.index(current) + 1 :] if current in inodes else files
            if not newer:
                return False
            inode, path = newer[0]
            fh = _open(path)
            if fh is not None and os.fstat(fh.fileno()).st_ino == inode:
                self.close()
                self._fh = fh
                return True
            if fh is not None:  # rotated again since the listing: list again
                fh.close()
        return False


def room_for(logs: int) -> int | None:
    """Raise this process's soft limit on open files so that `logs` logs can be read at once (each
    one's cursor holds its file); None when it can, else the hard limit that stops it."""
    needed = logs + 64  # and the interpreter's own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return None


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
