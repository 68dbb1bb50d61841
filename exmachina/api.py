"""The Python API: learn from a script or a notebook, then use what was learnt.

    run = exmachina.learn("configs/xor.yaml", **{"training.epochs": 500})
    run.model.predict([[0, 1]])

Training runs the real entry point, `python -m exmachina.supervisor --config FILE`, as a child
process in its own session: the supervisor installs signal handlers, names its processes and forks a
zygote, none of which belongs inside the caller's process. The caller only validates the config
(a bad key raises ConfigError before anything starts), echoes the child's output and reads the
run directory the child names.
"""

from __future__ import annotations

import atexit
import codecs
import collections
import contextlib
import copy
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from exmachina.config import Config, ConfigError, config_from_dict, load_config
from exmachina.data import datasets
from exmachina.model.trained import Model, load
from exmachina.rundir.directory import RunDir, resolve

# The supervisor's first line names the run directory (exmachina/launch/learn.py).
_RUN_LINE = re.compile(r"^exmachina: .*?(?:run directory|resuming at update \d+) (.+)$")
_STOPPED_CODES = (0, 130, 143)  # completed, or stopped by SIGINT / SIGTERM with the model saved


class LearnError(RuntimeError):
    """Training did not complete: bad input the child found, a crash or a stall. `run` is the run
    directory, when one was made."""

    def __init__(self, message: str, run: Run | None = None) -> None:
        super().__init__(message)
        self.run = run


class Run:
    """A run directory: its summary, its epoch records and its model, read when asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def summary(self) -> dict[str, Any] | None:
        """summary.json, written when the run ends (None while it trains)."""
        return RunDir(self.path).read_summary()

    @property
    def status(self) -> str | None:
        """completed, stopped, stalled, crashed or failed (None while it trains)."""
        return (self.summary or {}).get("status")

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One record per finished epoch (loss, accuracy, samples/s, ...), as in metrics.jsonl."""
        return _epoch_records(RunDir(self.path).metrics)

    @property
    def model(self) -> Model:
        return load(self.path)


def _epoch_records(path: Path) -> list[dict[str, Any]]:
    """Epoch records of a metrics file that may be growing: a line being written is left out."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "epoch":
            records.append(record)
    return records


class Training:
    """A run training in the background (`start`). Its output goes to this process's stdout and stderr."""

    def __init__(
        self, process: subprocess.Popen, output: int, errors: int, cwd: str, scratch: Path | None
    ) -> None:
        """`output`, `errors`: the read ends of the child's stdout (a pipe, or a pseudo-terminal's
        master) and stderr (a pipe)."""
        self._process = process
        self._cwd = cwd
        self._scratch = scratch
        self._found = threading.Event()
        self._path: Path | None = None
        self._errors: collections.deque[str] = collections.deque(maxlen=20)
        self._readers = [
            threading.Thread(target=_pump, args=(output, sys.stdout, self._on_stdout), daemon=True),
            threading.Thread(target=_pump, args=(errors, sys.stderr, self._on_stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __repr__(self) -> str:
        return f"Training({str(self._path)!r}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def run(self) -> Run:
        if self._path is None:
            raise LearnError("the run directory is not made yet")
        return Run(self._path)

    def progress(self) -> dict[str, Any] | None:
        """The latest epoch record, or None before the first epoch ends."""
        records = self.run.metrics
        return records[-1] if records else None

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (TimeoutError after `timeout` seconds, the run going on)."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the run is still training after {timeout} s") from None
        for reader in self._readers:
            reader.join()
        self._clean()
        if self._path is None:
            raise LearnError(self._errors[-1] if self._errors else f"training exited with code {code}")
        if code not in _STOPPED_CODES:
            last = self._errors[-1] if self._errors else f"exit code {code}"
            raise LearnError(f"{self._path}: the run ended {self.run.status or 'badly'}: {last}", self.run)
        return self.run

    def stop(self, timeout: float | None = None) -> Run:
        """Stop as Ctrl-C does (SIGINT): the neurons checkpoint, model.npz is written, all processes
        end. The run can then be resumed (`exmachina.resume(run.path)`)."""
        if self.running:
            self._process.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def _wait_for_run_dir(self) -> None:
        """Until the child names its run directory, or exits without one."""
        while not self._found.wait(0.1):
            if self._process.poll() is not None:
                self.wait()  # raises LearnError with the child's own one-line message

    def _on_stdout(self, line: str) -> None:
        if self._path is None and (match := _RUN_LINE.match(line)):
            self._path = Path(self._cwd) / match.group(1)
            self._found.set()
            self._clean()  # the child has read its config; the run dir holds its own copy

    def _on_stderr(self, line: str) -> None:
        if line.strip():
            self._errors.append(line.removeprefix("exmachina: "))

    def _clean(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _pump(fd: int, stream: Any, on_line: Callable[[str], None]) -> None:
    """Pass the child's output on as it comes (a live progress bar redraws without newlines), and
    each whole line to `on_line`. A closed or odd stream must not stop the draining, or the child
    would block on a full pipe."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every holder of the pseudo-terminal's other end has closed it
            chunk = b""
        text = decoder.decode(chunk, final=not chunk)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.write(text)
            stream.flush()
        *lines, pending = (pending + text).split("\n")
        for line in lines:
            on_line(line.rstrip("\r"))
        pending = pending[-4096:]
        if not chunk:
            break
    os.close(fd)


_live: weakref.WeakSet[Training] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """A script that ends while a run trains stops it: nothing is left training with nobody to read
    its output."""
    for training in list(_live):
        with contextlib.suppress(LearnError, TimeoutError):
            training.stop()


def start(config: str | Path | dict | Config, **overrides: Any) -> Training:
    """Start training in the background; returns once the run directory exists. `config` is a YAML
    file, a dict or a Config; `overrides` replace keys by dotted name (`**{"training.epochs": 5}`) or
    by section (`training={"epochs": 5}`). A bad config raises ConfigError, bad data DatasetError,
    before anything starts."""
    resolved = configure(config, overrides)
    datasets.load(resolved)
    scratch = Path(tempfile.mkdtemp(prefix="exmachina-config-"))
    path = scratch / "config.yaml"
    path.write_text(yaml.safe_dump(resolved.to_dict(), sort_keys=False))
    return _launch(["--config", str(path)], scratch)


def learn(config: str | Path | dict | Config, **overrides: Any) -> Run:
    """Train until the run ends, printing its progress; returns the Run. Ctrl-C (KeyboardInterrupt)
    stops the run as on the terminal (model saved, every process ended), then is raised again; the
    stopped run stays on disk, resumable. A run that crashes or stalls raises LearnError."""
    return _until_done(start(config, **overrides))


def resume(run: str | Path) -> Run:
    """Continue a stopped or crashed run from its newest consistent checkpoint, until it ends."""
    path = resolve(run).path
    if not RunDir(path).config.exists():
        raise ConfigError(f"{path}: not a run directory (no config.yaml)")
    return _until_done(_launch(["--resume", str(path.resolve())], None))


def _until_done(training: Training) -> Run:
    try:
        return training.wait()
    except KeyboardInterrupt:
        training.stop()
        raise


def _launch(arguments: list[str], scratch: Path | None) -> Training:
    """The supervisor as a child, importing this very copy of exmachina, in its own session: a
    Ctrl-C reaches this process only, which passes it on once."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    cwd = os.getcwd()
    output, child_output = _output_channel()
    errors, child_errors = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "exmachina.supervisor", *arguments],
            stdout=child_output,
            stderr=child_errors,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(output)
        os.close(errors)
        raise
    finally:
        os.close(child_output)
        os.close(child_errors)
    training = Training(process, output, errors, cwd, scratch)
    _live.add(training)
    try:
        training._wait_for_run_dir()
    except BaseException:
        if training.running:
            training._process.send_signal(signal.SIGINT)
            training._process.wait()
        raise
    return training


def _output_channel() -> tuple[int, int]:
    """(read end, the child's stdout): a pseudo-terminal as wide as ours when our stdout is a
    terminal, so the child draws the live progress bar the command line shows; else a pipe."""
    try:
        ours = sys.stdout.fileno() if sys.stdout.isatty() else None
    except (AttributeError, OSError, ValueError):  # a notebook's or a test's stand-in stream
        ours = None
    if ours is None:
        return os.pipe()
    master, slave = pty.openpty()
    with contextlib.suppress(OSError):
        termios.tcsetwinsize(slave, termios.tcgetwinsize(ours))
    return master, slave


# -- configs and overrides ------------------------------------------------------------------------------

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def configure(config: str | Path | dict | Config, overrides: dict[str, Any] | None = None) -> Config:
    """The validated config with `overrides` applied; relative paths keep their meaning (data.path
    against the config file's directory, a dict's against the current one; runs_dir against the
    current directory) and come back absolute."""
    if isinstance(config, str | Path):
        base = load_config(config)  # a file's faults first, named as the file
        source, raw = base.source, yaml.safe_load(Path(config).read_text())
    elif isinstance(config, Config):
        base, source, raw = config, config.source, config.to_dict()
    elif isinstance(config, dict):
        base, source, raw = None, "<memory>", copy.deepcopy(config)
    else:
        raise TypeError(f"config: a path, a dict or a Config, not {type(config).__name__}")
    if overrides or base is None:
        for key, value in (overrides or {}).items():
            _override(raw, key, value, source)
        base = config_from_dict(raw, source=source)
    resolved = base.to_dict()  # data.path made absolute against the config's own directory
    resolved["runtime"]["runs_dir"] = str(Path(base.runtime.runs_dir).expanduser().absolute())
    return config_from_dict(resolved, source=source)


def _override(raw: Any, key: str, value: Any, source: str) -> None:
    """One override: a dotted key (`training.epochs`, `network.layers[1].size`), or a section name
    whose dict merges into that section. Sections the file leaves out are made; the schema then
    judges every key (config_from_dict)."""
    steps: list[str | int] = [name or int(index) for name, index in _STEP.findall(key)]
    if not steps or _key_of(steps) != key:
        raise ConfigError(f"{source}: {key}: not a key (write it like training.epochs)")
    holder: Any = raw
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(holder, dict) and isinstance(step, str):
            if last:
                merge = isinstance(value, dict) and isinstance(holder.get(step), dict)
                holder[step] = _merged(holder[step], value) if merge else value
                return
            holder = holder.setdefault(step, {})
        elif isinstance(holder, list) and isinstance(step, int) and step < len(holder):
            if last:
                holder[step] = value
                return
            holder = holder[step]
        else:
            raise ConfigError(f"{source}: {_key_of(steps[: i + 1])}: no such key to override")


def _key_of(steps: list[str | int]) -> str:
    return "".join(f".{s}" if isinstance(s, str) else f"[{s}]" for s in steps).lstrip(".")


def _merged(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged
