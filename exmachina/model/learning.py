"""The backpropagation rules, written once.

A neuron calls them with its own values (its activity, the errors of its few downstream peers, the
weights on its axon); the dense reference calls the very same functions with a whole layer, where the
axon vectors of a layer stack into a matrix of shape (neurons, downstream neurons). The last axis of
every activity and error is the batch: length 1 in online training, B for mini-batches.

The optimizer and the learning-rate schedule are here too, for the same reason: a neuron keeps the
moments of its own axon and bias and steps them with `descend`, the reference keeps them for whole
layers and steps them with the same function, and both take the rate of an update from its count
alone (`rate`), so that no message ever carries a rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from exmachina.model.activations import Activation, Array

# Each optimizer's own parameters and their defaults: a parameter left out (None) takes its default;
# one that belongs to another optimizer is a config fault.
OPTIMIZER_PARAMETERS: dict[str, dict[str, float]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}
# How many arrays shaped like the parameter each optimizer keeps for it.
MOMENTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2}
# Each schedule's own parameters and defaults (None: required); `warmup` goes with every schedule.
SCHEDULE_PARAMETERS: dict[str, dict[str, float | None]] = {
    "constant": {},
    "step": {"every": None, "gamma": 0.5},
    "cosine": {"over": None, "floor": 0.0},
}


@dataclass(frozen=True)
class Optimizer:
    """How a gradient moves a parameter. sgd: w -= rate * g. momentum: v = momentum * v + g,
    w -= rate * v. nesterov: the same velocity, w -= rate * (g + momentum * v), the look-ahead step
    written at the current weights (where a neuron has its gradient). adam: the bias-corrected first
    and second moments, w -= rate * m_hat / (sqrt(v_hat) + eps)."""

    name: Literal["sgd", "momentum", "nesterov", "adam"] = "sgd"
    momentum: float | None = None  # momentum, nesterov: how much velocity each update keeps (0.9)
    beta1: float | None = None  # adam: decay of the mean gradient (0.9)
    beta2: float | None = None  # adam: decay of the mean squared gradient (0.999)
    eps: float | None = None  # adam: keeps the step finite where the gradient is ~0 (1e-8)


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each update, from the count of updates before it. A linear warm-up of
    `warmup` updates (rate * (t + 1) / warmup) comes first; the schedule counts from its end.
    constant: the rate. step: times `gamma` every `every` updates. cosine: half a cosine from the
    rate down to `floor` times it over `over` updates, then the floor."""

    name: Literal["constant", "step", "cosine"] = "constant"
    warmup: int = 0
    every: int | None = None  # step: updates between decays
    gamma: float | None = None  # step: the factor at each decay (0.5)
    over: int | None = None  # cosine: updates from the full rate to the floor
    floor: float | None = None  # cosine: the last rate, as a share of the learning rate (0.0)


SGD = Optimizer()
CONSTANT = Schedule()


def resolved(settings: Optimizer | Schedule) -> Optimizer | Schedule:
    """The same settings with each parameter of their kind that was left out at its default."""
    table = OPTIMIZER_PARAMETERS if isinstance(settings, Optimizer) else SCHEDULE_PARAMETERS
    defaults = table[settings.name]
    missing = {k: v for k, v in defaults.items() if getattr(settings, k) is None and v is not None}
    return type(settings)(**{**settings.__dict__, **missing})


def fire(net_input: Array, bias: Array, activation: Activation) -> tuple[Array, Array]:
    """Soma: net input plus bias, through the activation. Returns (net, activity)."""
    net = net_input + bias
    return net, activation.f(net)


def error(net: Array, activation: Activation, axon: np.ndarray, downstream_errors: np.ndarray) -> Array:
    """delta = f'(net) * sum_k w_k delta_k, with the weights as they were on the forward pass."""
    return activation.df(net) * (axon @ downstream_errors)


def axon_gradient(activity: np.ndarray, downstream_errors: np.ndarray) -> np.ndarray:
    """dL/dw_k = mean over the batch of a * delta_k: one entry per outgoing synapse (per neuron and
    synapse in a layer). activity (..., B), downstream_errors (synapses, B)."""
    return activity @ downstream_errors.T / activity.shape[-1]


def bias_gradient(delta: np.ndarray) -> Array:
    """dL/db = mean over the batch of delta."""
    return delta.mean(axis=-1)


def moments(optimizer: Optimizer, parameter: np.ndarray) -> list[np.ndarray]:
    """The zeros an optimizer starts from for one parameter array (none for sgd)."""
    return [np.zeros_like(parameter, dtype=float) for _ in range(MOMENTS[optimizer.name])]


def descend(
    parameter: np.ndarray,
    gradient: Array,
    rate: float,
    optimizer: Optimizer = SGD,
    kept: Sequence[np.ndarray] = (),
    step: int = 1,
) -> None:
    """One update of `parameter` by its gradient, in place, so that a neuron's axon array stays the
    same object; `kept` are the optimizer's moments for it (see `moments`), also moved in place;
    `step` counts this update from 1 (Adam's bias correction)."""
    name = optimizer.name
    if name == "sgd":
        parameter -= rate * gradient
    elif name in ("momentum", "nesterov"):
        (velocity,) = kept
        keep = optimizer.momentum
        assert keep is not None  # the config fills in every field its optimizer uses
        velocity *= keep
        velocity += gradient
        parameter -= rate * (gradient + keep * velocity if name == "nesterov" else velocity)
    else:
        mean, square = kept
        b1, b2, eps = optimizer.beta1, optimizer.beta2, optimizer.eps
        assert b1 is not None and b2 is not None and eps is not None
        mean *= b1
        mean += (1 - b1) * gradient
        square *= b2
        square += (1 - b2) * gradient * gradient
        unbiased = mean / (1 - b1**step)
        parameter -= rate * unbiased / (np.sqrt(square / (1 - b2**step)) + eps)


def rate_at(schedule: Schedule, learning_rate: float, done: int) -> float:
    """The rate of the update that follows `done` updates."""
    if done < schedule.warmup:
        return learning_rate * (done + 1) / schedule.warmup
    t = done - schedule.warmup
    if schedule.name == "step":
        gamma, every = schedule.gamma, schedule.every
        assert gamma is not None and every is not None  # the config fills them in
        return learning_rate * gamma ** (t // every)
    if schedule.name == "cosine":
        over, floor = schedule.over, schedule.floor
        assert over is not None and floor is not None
        progress = min(t, over) / over
        share = floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2
        return learning_rate * share
    return learning_rate
