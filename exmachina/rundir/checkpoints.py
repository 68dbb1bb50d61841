"""Checkpoints: each neuron saves its own state; the coordinator saves where it is in the data.

    checkpoints/<neuron>.<count>.ckpt     weights, bias and update count of one neuron
    checkpoints/coordinator.<count>.ckpt  epoch, position in the epoch's order, scores so far

`count` is the number of training samples the whole network had completed. Every file is written
aside and renamed into place, so a file with a final name is always whole (a `.tmp` is never read).
No fsync: the rename guards against a killed process, the failure this design expects; a power cut
may lose the newest files, and a resume then takes an older cut. Each process keeps its last KEEP
files; the newest count that every process has is a consistent cut, from which a run resumes.

A file is `[crc32, body]` in msgpack, `body` being the packed state: a flipped bit anywhere is
refused as damaged instead of loading as a wrong (say NaN) weight.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

KEEP = 3
_NAME = re.compile(r"^(?P<id>.+)\.(?P<count>\d{12})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be trusted."""


def directory(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(
    run_dir: str | Path,
    owner: str,
    count: int,
    state: dict[str, Any],
    kept: list[int] | None = None,
    keep: int | None = KEEP,
) -> Path:
    """Atomically write one checkpoint and prune the owner's old ones down to the newest `keep`
    (None: prune nothing, someone else does).

    `kept`: the owner's counts on disk, oldest first, kept up to date here. A neuron passes its own
    list, so that pruning needs no listing of a directory that holds a file per neuron several times
    over; without it the directory is read."""
    folder = directory(run_dir)
    folder.mkdir(exist_ok=True)
    path = folder / f"{owner}.{count:012d}.ckpt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    body = msgpack.packb({"owner": owner, "count": count, **state}, use_bin_type=True)
    write_atomic(tmp, path, msgpack.packb([zlib.crc32(body), body], use_bin_type=True))
    if kept is None:
        kept = counts(run_dir, owner)
    elif count not in kept:
        kept.append(count)
        kept.sort()
    if keep is not None:
        for old in kept[:-keep]:
            (folder / f"{owner}.{old:012d}.ckpt").unlink(missing_ok=True)
        del kept[:-keep]
    return path


def write_atomic(tmp: Path, path: Path, data: bytes) -> None:
    """`data` into `tmp`, renamed to `path`; on a failure (a full disk) no `.tmp` is left behind and
    `path` keeps what it held."""
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def counts(run_dir: str | Path, owner: str) -> list[int]:
    """The counts this owner has checkpoints for, oldest first (never half-written files)."""
    folder = directory(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"{owner}.*.ckpt"):
        match = _NAME.match(path.name)
        if match and match["id"] == owner:
            found.append(int(match["count"]))
    return sorted(found)


def load(run_dir: str | Path, owner: str, count: int) -> dict[str, Any]:
    path = directory(run_dir) / f"{owner}.{count:012d}.ckpt"
    try:
        crc, body = msgpack.unpackb(path.read_bytes(), raw=False)
        if crc != zlib.crc32(body):
            raise CheckpointError(f"{path}: damaged checkpoint (checksum mismatch)")
        state = msgpack.unpackb(body, raw=False)
    except CheckpointError:
        raise
    except Exception as exc:  # any decoding failure means the file cannot be trusted
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("owner") != owner or state.get("count") != count:
        raise CheckpointError(f"{path}: not a checkpoint of {owner} at {count}")
    return state


def latest(run_dir: str | Path, owner: str) -> dict[str, Any] | None:
    """The owner's newest checkpoint, or None; raises CheckpointError if it is damaged."""
    found = counts(run_dir, owner)
    return load(run_dir, owner, found[-1]) if found else None


def newest_readable(
    run_dir: str | Path,
    owner: str,
    at_most: int | None = None,
    damaged: Callable[[CheckpointError], None] | None = None,
) -> dict[str, Any] | None:
    """The owner's newest checkpoint that loads, at `at_most` or below; each damaged one on the way
    is passed to `damaged` (to be reported) and passed over. None if there is none."""
    for count in reversed(counts(run_dir, owner)):
        if at_most is not None and count > at_most:
            continue
        try:
            return load(run_dir, owner, count)
        except CheckpointError as exc:
            if damaged is not None:
                damaged(exc)
    return None


def shared_counts(run_dir: str | Path, owners: Iterable[str]) -> list[int]:
    """Every count all owners have a checkpoint for, newest first: the consistent cuts."""
    return sorted(_shared(listing(run_dir), list(owners)), reverse=True)


def _shared(found: dict[str, list[int]], owners: list[str]) -> set[int]:
    return set.intersection(*(set(found.get(owner, ())) for owner in owners)) if owners else set()


def listing(run_dir: str | Path) -> dict[str, list[int]]:
    """Every owner's counts on disk, oldest first, from one listing of the folder (however many
    neurons it holds files of)."""
    found: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(directory(run_dir)) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match:
                found.setdefault(match["id"], []).append(int(match["count"]))
    return {owner: sorted(found_counts) for owner, found_counts in found.items()}


def prune_below_cut(run_dir: str | Path, owners: Iterable[str]) -> list[str]:
    """Remove the checkpoints older than the newest cut all `owners` share, the cut a resume takes;
    the names removed (relative to the run directory). Nothing goes while they share none."""
    found = listing(run_dir)
    owners = list(owners)
    shared = _shared(found, owners)
    if not shared:
        return []
    cut = max(shared)
    removed = []
    for owner in owners:
        for count in found[owner]:
            if count < cut:
                name = f"{owner}.{count:012d}.ckpt"
                (directory(run_dir) / name).unlink(missing_ok=True)
                removed.append(f"checkpoints/{name}")
    return removed


def common_count(run_dir: str | Path, owners: Iterable[str]) -> int | None:
    """The newest count every owner has a checkpoint for: a consistent cut, or None."""
    shared = shared_counts(run_dir, owners)
    return shared[0] if shared else None


def neuron_state(
    weights: np.ndarray,
    bias: float,
    updates: int,
    weight_moments: Iterable[np.ndarray] = (),
    bias_moments: Iterable[np.ndarray | float] = (),
) -> dict[str, Any]:
    """A neuron's state; the moments are its optimizer's (none for plain SGD), one array shaped like
    the axon and one number for the bias each, so that a restarted neuron resumes them too."""
    return {
        "bias": float(bias),
        "weights": weights.astype("<f8").tobytes(),
        "updates": updates,
        "weight_moments": [m.astype("<f8").tobytes() for m in weight_moments],
        "bias_moments": [float(m) for m in bias_moments],
    }


def weights_of(state: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(state["weights"], dtype="<f8").copy()


def moments_of(state: dict[str, Any]) -> tuple[list[np.ndarray], list[float]]:
    """(moments of the axon, moments of the bias) of a neuron's state."""
    weights = [np.frombuffer(m, dtype="<f8").copy() for m in state.get("weight_moments", [])]
    return weights, [float(m) for m in state.get("bias_moments", [])]


def assemble(run_dir: str | Path, initial: Any, ids_by_layer: list[tuple[str, ...]], count: int) -> Any:
    """The whole network's parameters at one count, from every neuron's own checkpoint.
    `initial` gives the shapes (a Parameters); it is copied, not changed."""
    parameters = initial.copy()
    last = len(ids_by_layer) - 1
    for layer, ids in enumerate(ids_by_layer):
        for index, nid in enumerate(ids):
            state = load(run_dir, nid, count)
            parameters.biases[layer][index] = state["bias"]
            if layer < last:
                parameters.axons[layer][index] = weights_of(state)
    return parameters


def discard_after(run_dir: str | Path, owners: Iterable[str], count: int) -> None:
    """Forget checkpoints beyond a cut: a resumed run starts from the cut, not from any one of them."""
    for owner in owners:
        for newer in (c for c in counts(run_dir, owner) if c > count):
            (directory(run_dir) / f"{owner}.{newer:012d}.ckpt").unlink()
