"""Datasets: the built-in truth tables, the Semeion digits loader, splits and the epoch order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exmachina.config import Config


class DatasetError(ValueError):
    """A bad data file: the message is one line, `file:row: what is wrong`."""


@dataclass(frozen=True)
class Dataset:
    name: str
    inputs: np.ndarray  # (rows, input width)
    targets: np.ndarray  # (rows, output width)

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, rows: np.ndarray) -> Dataset:
        return Dataset(self.name, self.inputs[rows], self.targets[rows])


_TRUTH_INPUTS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
_TRUTH_TABLES = {"xor": [0, 1, 1, 0], "and": [0, 0, 0, 1], "or": [0, 1, 1, 1]}

SEMEION_PIXELS = 256
SEMEION_CLASSES = 10


def builtin(name: str) -> Dataset:
    return Dataset(name, _TRUTH_INPUTS.copy(), np.array(_TRUTH_TABLES[name], dtype=float)[:, None])


def load_semeion(path: str | Path) -> Dataset:
    """Semeion Handwritten Digit rows: 256 pixels (0 or 1) then a one-hot label of 10."""
    path = Path(path)
    lines = _lines(path)
    width = SEMEION_PIXELS + SEMEION_CLASSES
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != width:
            raise DatasetError(f"{path}:{number}: expected {width} values, found {len(fields)}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            bad = next(v for v in fields if not _is_number(v))
            raise DatasetError(f"{path}:{number}: {bad!r} is not a number") from None
        if not all(map(math.isfinite, values)):
            bad = next(v for v in fields if not _is_number(v))
            raise DatasetError(f"{path}:{number}: {bad!r} is not a finite number")
        label = values[SEMEION_PIXELS:]
        if sorted(label) != [0.0] * (SEMEION_CLASSES - 1) + [1.0]:
            raise DatasetError(f"{path}:{number}: the last {SEMEION_CLASSES} values are not one-hot")
        rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    table = np.array(rows)
    return Dataset("semeion", table[:, :SEMEION_PIXELS], table[:, SEMEION_PIXELS:])


def load_csv(path: str | Path, targets: int) -> Dataset:
    """Rows of numbers separated by commas or spaces; the last `targets` columns are the targets."""
    table = read_table(path)
    if table.shape[1] <= targets:
        raise DatasetError(f"{path}: {table.shape[1]} values a row leave no inputs before {targets} targets")
    return Dataset(Path(path).stem, table[:, :-targets], table[:, -targets:])


def read_table(path: str | Path) -> np.ndarray:
    """A file of rows of numbers, separated by commas or spaces (`#` starts a comment line), all rows
    as wide as the first."""
    path = Path(path)
    lines = _lines(path)
    rows: list[list[float]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        if rows and len(fields) != len(rows[0]):
            raise DatasetError(f"{path}:{number}: expected {len(rows[0])} values, found {len(fields)}")
        bad = next((v for v in fields if not _is_number(v)), None)
        if bad is not None:
            raise DatasetError(f"{path}:{number}: {bad!r} is not a {_finite(bad)}number")
        rows.append([float(v) for v in fields])
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return np.array(rows)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read data file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: byte {exc.start}: not a text file of numbers") from None


def _finite(text: str) -> str:
    """'finite ' where `text` is a number all the same (NaN, an infinity), for the message."""
    try:
        float(text)
    except ValueError:
        return ""
    return "finite "


def _is_number(text: str) -> bool:
    """A finite number: a NaN or an infinity in a row would turn every weight it reaches into NaN."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def load(config: Config) -> Dataset:
    """The config's dataset, checked against the network's input and output widths."""
    d, path = config.data, config.data_path()
    if d.source == "semeion" and path is not None:
        data = load_semeion(path)
    elif d.source == "csv" and path is not None and d.targets is not None:
        data = load_csv(path, d.targets)
    else:  # the config's checks leave only the built-in tables here
        data = builtin(d.source)
    if d.limit is not None and d.limit < len(data):
        # a random subset fixed by the seed: data files are often sorted by class (Semeion is)
        rows = np.random.default_rng([config.seed, 0x11A1]).permutation(len(data))[: d.limit]
        data = data.subset(np.sort(rows))
    sizes = config.layer_sizes
    if data.inputs.shape[1] != sizes[0]:
        raise DatasetError(
            f"{config.source}: network.layers[0].size: {sizes[0]} input neurons, "
            f"but {d.source} rows have {data.inputs.shape[1]} inputs"
        )
    if data.targets.shape[1] != sizes[-1]:
        raise DatasetError(
            f"{config.source}: network.layers[{len(sizes) - 1}].size: {sizes[-1]} output neurons, "
            f"but {d.source} rows have {data.targets.shape[1]} targets"
        )
    if d.holdout and len(data) - max(1, round(d.holdout * len(data))) < 1:
        raise DatasetError(
            f"{config.source}: data.holdout: holding out {d.holdout:g} of {len(data)} rows leaves none to "
            "train on"
        )
    return data


def split(data: Dataset, holdout: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, held out), fixed by the seed; with holdout 0 the held-out set is the training set."""
    if holdout <= 0:
        return data, data
    order = np.random.default_rng([seed, 0xD474]).permutation(len(data))
    cut = len(data) - max(1, round(holdout * len(data)))
    return data.subset(np.sort(order[:cut])), data.subset(np.sort(order[cut:]))


def epoch_order(seed: int, epoch: int, rows: int, shuffle: bool = True) -> np.ndarray:
    """The order of one pass: the same for the process network and the reference, and on resume."""
    if not shuffle:
        return np.arange(rows)
    return np.random.default_rng([seed, 0xE90C, epoch]).permutation(rows)
