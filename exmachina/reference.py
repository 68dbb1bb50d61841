"""The dense NumPy version of the very same algorithm: the oracle for tests and the speed baseline.

It calls the learning rules in `learning.py` on whole layers, where each neuron process calls them on
its own scalars; the two must agree to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exmachina.activations import ACTIVATIONS, LOSSES, accuracy
from exmachina.datasets import Dataset, epoch_order
from exmachina.learning import axon_gradient, descend, error, fire
from exmachina.parameters import Parameters


@dataclass
class EpochResult:
    epoch: int
    loss: float
    accuracy: float


class Reference:
    def __init__(self, parameters: Parameters, loss: str, learning_rate: float) -> None:
        self.p = parameters
        self.loss = LOSSES[loss]
        self.learning_rate = learning_rate
        self.activations = [ACTIVATIONS[name] for name in parameters.activations]
        # An output neuron's axon is one fixed synapse of weight 1 to the coordinator.
        self.output_axon = np.eye(parameters.sizes[-1])

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Nets and activities of every layer. The input layer's single synapse carries x itself."""
        net, a = fire(x, self.p.biases[0], self.activations[0])
        nets, acts = [net], [a]
        for layer in range(1, len(self.p.biases)):
            net, a = fire(a @ self.p.axons[layer - 1], self.p.biases[layer], self.activations[layer])
            nets.append(net)
            acts.append(a)
        return nets, acts

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.forward(np.atleast_2d(inputs))[1][-1]

    def train_sample(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """One online SGD step; returns (loss, output) of the forward pass."""
        nets, acts = self.forward(x)
        lr, last = self.learning_rate, len(acts) - 1
        output = acts[last]
        downstream = self.loss.grad(output, y)
        axon = self.output_axon
        for layer in range(last, -1, -1):
            delta = error(nets[layer], self.activations[layer], axon, downstream)
            if layer < last:
                descend(self.p.axons[layer], axon_gradient(acts[layer], downstream), lr)
            if self.p.learn_bias[layer]:
                descend(self.p.biases[layer], delta, lr)
            if layer > 0:
                axon, downstream = self.p.axons[layer - 1], delta
        return self.loss.value(output, y), output

    def train_epoch(self, data: Dataset, epoch: int, seed: int, shuffle: bool = True) -> EpochResult:
        losses, outputs = [], []
        order = epoch_order(seed, epoch, len(data), shuffle)
        for row in order:
            loss, output = self.train_sample(data.inputs[row], data.targets[row])
            losses.append(loss)
            outputs.append(output)
        return EpochResult(epoch, float(np.mean(losses)), accuracy(np.array(outputs), data.targets[order]))

    def evaluate(self, data: Dataset) -> tuple[float, float]:
        """(mean loss, accuracy) without learning."""
        outputs = self.predict(data.inputs)
        loss = np.mean([self.loss.value(o, y) for o, y in zip(outputs, data.targets)])
        return float(loss), accuracy(outputs, data.targets)
