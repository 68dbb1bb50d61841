"""The run directory: everything one training run leaves behind.

runs/<name>-<time>/
    config.yaml      the resolved config
    metrics.jsonl    one line per epoch (and events such as restarts)
    model.npz        every weight and bias, loadable by the reference (parameters.py)
    summary.json     final figures, written when the run ends
    neurons/<id>.log one log per process
runs/latest -> the newest run
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exmachina.config import Config


@dataclass(frozen=True)
class Site:
    """Where a process of the run lives: how it binds, whom it reports to, where it logs."""

    transport: str
    place: str  # the socket directory (ipc) or the host to bind (tcp)
    coordinator: str  # the coordinator's inbox endpoint
    run_dir: str
    log_level: str
    log_max_bytes: int
    log_backups: int
    stats_interval: float
    checkpoint_every: int
    # CURVE: every process's public key by id (None: links in the clear). Secret keys are never
    # here: each process gets its own as an argument of its start (exmachina/curve.py).
    public_keys: dict[str, bytes] | None = field(default=None, repr=False)


class RunInUse(Exception):
    """Another process runs this run directory."""


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._held: int | None = None  # the descriptor that holds the claim (see `claim`)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    model = property(lambda self: self.path / "model.npz")
    summary = property(lambda self: self.path / "summary.json")
    neurons = property(lambda self: self.path / "neurons")
    snapshot = property(lambda self: self.path / "snapshot.npz")
    predictions = property(lambda self: self.path / "predictions.json")
    stats = property(lambda self: self.path / "stats.json")

    def log(self, process_id: str) -> Path:
        return self.neurons / f"{process_id}.log"

    @classmethod
    def create(cls, config: Config, claim: bool = False) -> RunDir:
        """A fresh directory, complete before anyone sees it: built aside, then renamed into place;
        with `claim`, claimed for this process before it has a name (see `claim`)."""
        root = Path(config.runtime.runs_dir)
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        staging = root / f".{config.name}-{stamp}-{os.getpid()}.tmp"
        staging.mkdir()
        run = cls(staging)
        if claim:  # the claim stays with the directory through the rename
            run.claim()
        try:
            (staging / "neurons").mkdir()
            (staging / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            for n in range(1000):
                final = root / (f"{config.name}-{stamp}" + (f"-{n}" if n else ""))
                try:
                    staging.rename(final)  # fails if `final` exists and is not empty
                    break
                except OSError:
                    continue
            else:
                raise FileExistsError(f"{root}: no free run name for {config.name}-{stamp}")
        except BaseException:
            run.release()
            raise
        run.path = final
        link = root / "latest"
        tmp_link = root / f".latest-{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(final.name)
        os.replace(tmp_link, link)
        return run

    def claim(self) -> None:
        """Hold this directory for as long as this process runs it, or raise RunInUse. Two processes
        running one run would each rewrite what the other writes (a resume truncates the metrics and
        drops newer checkpoints). The claim is a lock on the directory itself, so the kernel lets it
        go when the process ends, however it ends, and no stale lock file can outlive a crash."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInUse(
                f"{self.path}: this run is still running (exmachina ps {self.path} lists its processes): "
                "stop it first"
            ) from None
        self._held = fd

    def release(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One whole line in one write on an O_APPEND descriptor: a full disk fails the write, it
        does not leave half a line for the next reader."""
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if os.write(fd, line) != len(line):
                os.ftruncate(fd, size)  # a short write: take the part back, and say so
                raise OSError(28, "No space left on device", str(self.metrics))
        finally:
            os.close(fd)

    def truncate_metrics(self, epochs: int) -> None:
        """Keep only what happened up to `epochs` completed epochs (a resumed run redoes the rest)."""
        kept = [r for r in self.read_metrics() if r.get("event") != "epoch" or r["epoch"] <= epochs]
        tmp = self.metrics.with_name(".metrics.jsonl.tmp")
        _write_atomic(tmp, self.metrics, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every whole line: a line cut short (a disk that filled mid-write) is not a record."""
        if not self.metrics.exists():
            return []
        records = []
        for line in self.metrics.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return [r for r in records if isinstance(r, dict)]

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary, summary)

    def read_summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary.read_text()) if self.summary.exists() else None


def write_json(path: Path, value: Any, indent: int | None = 1) -> None:
    """Atomic (write aside, then rename): a reader never sees half a file. `indent=None` is the
    compact form, twice as fast to write (json's C encoder only serves it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_atomic(tmp, path, (json.dumps(value, indent=indent) + "\n").encode())


def _write_atomic(tmp: Path, path: Path, data: bytes) -> None:
    """`data` into `tmp`, renamed to `path`; a failure (a full disk) leaves no `.tmp` behind."""
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resolve(run: str | Path | None, runs_dir: str | Path = "runs") -> RunDir:
    """A run named on the command line: a path, a name under runs/, or (None) the latest."""
    if run is None:
        return RunDir(Path(runs_dir) / "latest")
    path = Path(run)
    if path.exists():
        return RunDir(path)
    return RunDir(Path(runs_dir) / run)
