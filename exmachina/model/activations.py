"""Activations and losses, defined once for the neuron processes and the dense reference.

Every function takes a float or a NumPy array, so one neuron (a scalar) and the reference (a whole
layer at once) run the very same lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray  # a batch of values (a neuron's) or a layer's matrix of them


@dataclass(frozen=True)
class Activation:
    """f and its derivative f', the latter written in terms of the net input."""

    name: str
    f: Callable[[Array], Array]
    df: Callable[[Array], Array]


def _logistic(net: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-net))


def _dlogistic(net: Array) -> Array:
    s = _logistic(net)
    return s * (1.0 - s)


def _dtanh(net: Array) -> Array:
    t = np.tanh(net)
    return 1.0 - t * t


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", lambda net: net + 0.0, lambda net: np.ones_like(net)),
    "logistic": Activation("logistic", _logistic, _dlogistic),
    "tanh": Activation("tanh", np.tanh, _dtanh),
    "relu": Activation("relu", lambda net: np.maximum(net, 0.0), lambda net: (net > 0.0) * 1.0),
}


@dataclass(frozen=True)
class Loss:
    """A loss over the whole output vector and its gradient dL/da with respect to the outputs.
    Outputs run along axis 0; a second axis, if any, is the batch (one loss per sample)."""

    name: str
    value: Callable[[np.ndarray, np.ndarray], Array]
    grad: Callable[[np.ndarray, np.ndarray], np.ndarray]
    needs_identity_outputs: bool


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - np.max(a, axis=0))
    return e / np.sum(e, axis=0)


def _cross_entropy(a: np.ndarray, y: np.ndarray) -> Array:
    shifted = a - np.max(a, axis=0)
    log_p = shifted - np.log(np.sum(np.exp(shifted), axis=0))
    return -np.sum(y * log_p, axis=0)


LOSSES: dict[str, Loss] = {
    # The original's loss: half the squared error, so that dL/da is simply (a - y).
    "squared_error": Loss(
        "squared_error",
        lambda a, y: 0.5 * np.sum((a - y) ** 2, axis=0),
        lambda a, y: a - y,
        needs_identity_outputs=False,
    ),
    # Softmax is taken by the coordinator over all outputs; the output neurons emit raw logits.
    "softmax_cross_entropy": Loss(
        "softmax_cross_entropy",
        _cross_entropy,
        lambda a, y: _softmax(a) - y,
        needs_identity_outputs=True,
    ),
}


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Class decisions: argmax for several outputs, a 0.5 threshold for a single one."""
    outputs = np.atleast_2d(outputs)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(int)
    return np.argmax(outputs, axis=1)


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(predictions(outputs) == predictions(targets)))
