"""The backpropagation rules, written once.

A neuron calls them with its own values (its activity, the errors of its few downstream peers, the
weights on its axon); the dense reference calls the very same functions with a whole layer, where the
axon vectors of a layer stack into a matrix of shape (neurons, downstream neurons). The last axis of
every activity and error is the batch: length 1 in online training, B for mini-batches.
"""

from __future__ import annotations

import numpy as np

from exmachina.model.activations import Activation, Array


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


def descend(parameter: np.ndarray, gradient: Array, learning_rate: float) -> None:
    """Plain SGD, in place, so that a neuron's axon array stays the same object."""
    parameter -= learning_rate * gradient
