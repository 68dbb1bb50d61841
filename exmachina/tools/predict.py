"""`exmachina predict` and `exmachina evaluate`: a run's model on rows of a file, in this process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from exmachina.data.datasets import Dataset, read_table
from exmachina.model.trained import Model, ModelError, load


def split_columns(model: Model, path: str | Path) -> Dataset:
    """A file's rows as the model's inputs, with targets when the rows also carry them (inputs then
    targets, as a csv data source has them); targets are NaN when they do not."""
    table = read_table(path)
    width, inputs, outputs = table.shape[1], model.inputs, model.outputs
    if width == inputs:
        return Dataset(Path(path).stem, table, np.full((len(table), outputs), np.nan))
    if width == inputs + outputs:
        return Dataset(Path(path).stem, table[:, :inputs], table[:, inputs:])
    raise ModelError(
        f"{path}: rows have {width} values, the model takes {inputs} inputs "
        f"(or {inputs + outputs} with its {outputs} targets)"
    )


def predict(run: str | None, data: Path, as_json: bool = False, classes: bool = False) -> int:
    """One line of outputs per row on stdout (or one JSON list); accuracy on stderr if the rows have
    targets."""
    model = load(run)
    rows = split_columns(model, data)
    outputs = model.predict(rows.inputs)
    answers = model.classify(rows.inputs).tolist() if classes else outputs.tolist()
    if as_json:
        print(json.dumps(answers))
    else:
        for answer in answers:
            print(answer if classes else ",".join(repr(v) for v in answer))
    if not np.isnan(rows.targets).any():
        scores = model.evaluate(rows)
        print(
            f"accuracy {scores['accuracy']:.1%}, loss {scores['loss']:.6g} on {len(rows)} rows",
            file=sys.stderr,
        )
    return 0


def evaluate(run: str | None, data: Path | None = None, as_json: bool = False) -> int:
    """Loss and accuracy on a file's rows, or on the rows the run held out."""
    model = load(run)
    if data is not None:
        rows, what = split_columns(model, data), f"rows of {data}"
        if np.isnan(rows.targets).any():
            raise ModelError(f"{data}: rows have no targets to evaluate against")
    else:
        rows = model.held_out()
        held = model.config is not None and model.config.data.holdout
        what = "held-out rows" if held else "training rows (the run held none out)"
    scores = model.evaluate(rows)
    if as_json:
        print(json.dumps({**scores, "rows": len(rows)}))
    else:
        print(f"loss {scores['loss']:.6g}, accuracy {scores['accuracy']:.1%} on {len(rows)} {what}")
    return 0
