"""The dense NumPy version of the very same algorithm: the oracle for tests and the speed baseline.

It calls the learning rules in `learning.py` on whole layers, where each neuron process calls them on
its own scalars; the two must agree to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exmachina.data.datasets import Dataset, epoch_order
from exmachina.model.activations import ACTIVATIONS, LOSSES, accuracy
from exmachina.model.learning import (
    CONSTANT,
    SGD,
    Optimizer,
    Schedule,
    axon_gradient,
    bias_gradient,
    descend,
    error,
    fire,
    moments,
    rate_at,
)
from exmachina.model.parameters import Parameters


@dataclass
class EpochResult:
    epoch: int
    loss: float
    accuracy: float


class Reference:
    """Layer activities are (neurons, batch) matrices: column b is sample b of the batch. The
    optimizer's moments are kept per layer, shaped like its axons and biases: row i of a layer's
    moments is what neuron i of that layer keeps."""

    def __init__(
        self,
        parameters: Parameters,
        loss: str,
        learning_rate: float,
        optimizer: Optimizer = SGD,
        schedule: Schedule = CONSTANT,
    ) -> None:
        self.p = parameters
        self.loss = LOSSES[loss]
        self.learning_rate, self.optimizer, self.schedule = learning_rate, optimizer, schedule
        self.updates = 0
        self.axon_moments = [moments(optimizer, axon) for axon in parameters.axons]
        self.bias_moments = [moments(optimizer, bias) for bias in parameters.biases]
        self.activations = [ACTIVATIONS[name] for name in parameters.activations]
        # An output neuron's axon is one fixed synapse of weight 1 to the coordinator.
        self.output_axon = np.eye(parameters.sizes[-1])

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Nets and activities of every layer for x of shape (inputs, batch). The input layer's single
        synapse carries x itself."""
        net, a = fire(x, self.p.biases[0][:, None], self.activations[0])
        nets, acts = [net], [a]
        for layer in range(1, len(self.p.biases)):
            net, a = fire(
                self.p.axons[layer - 1].T @ a, self.p.biases[layer][:, None], self.activations[layer]
            )
            nets.append(net)
            acts.append(a)
        return nets, acts

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs, one row per row of `inputs`."""
        return self.forward(np.atleast_2d(inputs).T)[1][-1].T

    def train_batch(self, x: np.ndarray, y: np.ndarray, counts: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """One update on a batch (rows are samples); returns (loss per sample, outputs by row).
        `counts`: the updates it stands for (a group of batches in flight stepping once), by which
        the count goes on, at the rate of the first."""
        nets, acts = self.forward(x.T)
        lr, last = rate_at(self.schedule, self.learning_rate, self.updates), len(acts) - 1
        self.updates += counts
        opt, step = self.optimizer, self.updates
        output = acts[last]
        downstream = self.loss.grad(output, y.T)
        axon = self.output_axon
        for layer in range(last, -1, -1):
            delta = error(nets[layer], self.activations[layer], axon, downstream)
            if layer < last:
                gradient = axon_gradient(acts[layer], downstream)
                descend(self.p.axons[layer], gradient, lr, opt, self.axon_moments[layer], step)
            if self.p.learn_bias[layer]:
                descend(self.p.biases[layer], bias_gradient(delta), lr, opt, self.bias_moments[layer], step)
            if layer > 0:
                axon, downstream = self.p.axons[layer - 1], delta
        return self.loss.value(output, y.T), output.T

    def train_epoch(
        self, data: Dataset, epoch: int, seed: int, shuffle: bool = True, batch_size: int = 1, group: int = 1
    ) -> EpochResult:
        """`group` > 1: that many batches at a time move the weights once by their mean gradient, as
        the process network's groups in flight do with `in_flight_step: once`."""
        order = epoch_order(seed, epoch, len(data), shuffle)
        losses: list[float] = []
        outputs: list[np.ndarray] = []
        for start in range(0, len(order), batch_size * group):
            rows = order[start : start + batch_size * group]
            counts = -(-len(rows) // batch_size)  # the batches in this group
            loss, output = self.train_batch(data.inputs[rows], data.targets[rows], counts)
            losses.extend(loss)
            outputs.extend(output)
        return EpochResult(epoch, float(np.mean(losses)), accuracy(np.array(outputs), data.targets[order]))

    def evaluate(self, data: Dataset) -> tuple[float, float]:
        """(mean loss, accuracy) without learning."""
        outputs = self.predict(data.inputs)
        loss = np.mean(self.loss.value(outputs.T, data.targets.T))
        return float(loss), accuracy(outputs, data.targets)
