"""A trained model, loaded from a run: predict, classify and evaluate without starting a process.

The forward pass is the dense reference's (reference.py), which calls the very `fire` and activations
every neuron process calls: the outputs here are the outputs the process network gives, to rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from exmachina.config import Config, config_from_dict
from exmachina.data import datasets
from exmachina.data.datasets import Dataset
from exmachina.model.activations import predictions
from exmachina.model.parameters import Parameters
from exmachina.model.reference import Reference
from exmachina.rundir.directory import RunDir, resolve


class ModelError(ValueError):
    """No model where one was named, or rows that do not fit it: the message is one line."""


class Model:
    """Weights and biases of a run's model.npz, with the loss its config trained them for."""

    def __init__(
        self, parameters: Parameters, loss: str = "squared_error", config: Config | None = None
    ) -> None:
        self.parameters = parameters
        self.loss = loss
        self.config = config  # the run's config, when the model came with one
        self._reference = Reference(parameters, loss, learning_rate=0.0)

    @property
    def layer_sizes(self) -> list[int]:
        return self.parameters.sizes

    @property
    def activations(self) -> list[str]:
        return list(self.parameters.activations)

    @property
    def inputs(self) -> int:
        return self.layer_sizes[0]

    @property
    def outputs(self) -> int:
        return self.layer_sizes[-1]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The output layer's activities, one row per input row (raw logits for a softmax loss, whose
        softmax the coordinator takes outside the network)."""
        return self._reference.predict(self._checked(rows))

    def classify(self, rows: np.ndarray) -> np.ndarray:
        """Class per row, as accuracy counts it: argmax of several outputs, a single one above 0.5."""
        return predictions(self.predict(rows))

    def evaluate(self, data: Dataset | tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
        """Mean loss and accuracy over `data`, a Dataset or (inputs, targets) arrays, without learning."""
        if not isinstance(data, Dataset):
            inputs, targets = data
            data = Dataset("rows", np.atleast_2d(np.asarray(inputs, float)), _as_rows(targets))
        self._checked(data.inputs)
        if data.targets.shape[1] != self.outputs:
            raise ModelError(f"the model has {self.outputs} outputs, the targets {data.targets.shape[1]}")
        loss, accuracy = self._reference.evaluate(data)
        return {"loss": loss, "accuracy": accuracy}

    def held_out(self) -> Dataset:
        """The rows the run held out (datasets.split, by the run's seed); with no holdout, its
        training rows."""
        if self.config is None:
            raise ModelError("this model came without its run's config.yaml: give the data to evaluate")
        config = self.config
        return datasets.split(datasets.load(config), config.data.holdout, config.seed)[1]

    def _checked(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(rows, dtype=float))
        if rows.ndim != 2 or rows.shape[1] != self.inputs:
            raise ModelError(f"the model takes {self.inputs} inputs, the rows have {rows.shape[-1]}")
        return rows


def _as_rows(targets: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets, dtype=float)
    return targets[:, None] if targets.ndim == 1 else np.atleast_2d(targets)


def model_file(run: str | Path | None) -> Path:
    """model.npz of a run named as on the command line (a directory, `latest`, a name under runs/),
    or a model file itself."""
    path = Path(run) if run is not None else None
    if path is not None and path.is_file():
        return path
    found = resolve(run)
    if not found.path.is_dir():
        raise ModelError(f"{found.path}: no such run directory or model file")
    if not found.model.exists():
        raise ModelError(f"{found.path}: no model.npz (a run writes it when it ends or is stopped)")
    return found.model


def load(run: str | Path | None) -> Model:
    """The model of a run directory, `latest` (None) or a run's name, or of a model.npz path. The
    config.yaml beside it, if any, gives the loss it was trained for."""
    path = model_file(run)
    try:
        parameters = Parameters.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: not a model file ({exc})") from None
    config_file = RunDir(path.parent).config
    if not config_file.exists():
        return Model(parameters)
    config = config_from_dict(yaml.safe_load(config_file.read_text()), source=str(config_file))
    return Model(parameters, config.training.loss, config)
