"""Layers -> neurons ("input.0", "hidden1.3", "output.9") and who is wired to whom.

Layers are fully connected. Every neuron's dendrites have one synapse per neuron of the layer before
it; every axon one synapse per neuron of the layer after it. The coordinator closes both ends: it is
the single upstream peer of each input neuron (the sensor) and the single downstream peer of each
output neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exmachina.config import Config
from exmachina.model.learning import CONSTANT, SGD, Optimizer, Schedule
from exmachina.model.parameters import Parameters

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class NeuronSpec:
    """Everything a neuron process needs to know about itself at birth."""

    id: str
    layer: int
    index: int
    activation: str
    axon: np.ndarray  # initial weights, one per outgoing synapse
    bias: float
    learn_bias: bool
    plastic_axon: bool  # the output layer's one synapse to the coordinator is fixed at 1
    learning_rate: float
    upstream: tuple[str, ...]  # ids, in synapse order: one dendrite synapse each
    downstream: tuple[str, ...]
    updates: int = 0  # the training count these weights stand at (non-zero when resuming)
    optimizer: Optimizer = SGD  # its moments live in the neuron, for its own axon and bias
    schedule: Schedule = CONSTANT  # the rate of each update, from the neuron's own update count
    step_once: bool = False  # a group in flight moves the weights once, by its mean gradient


def neuron_id(layer_name: str, index: int) -> str:
    return f"{layer_name}.{index}"


def layer_ids(config: Config, layer: int) -> tuple[str, ...]:
    spec = config.network.layers[layer]
    return tuple(neuron_id(spec.name, i) for i in range(spec.size))


def neurons(config: Config, parameters: Parameters, updates: int = 0) -> list[NeuronSpec]:
    """Every neuron of the network, layer by layer, with its initial weights and bias."""
    last = len(config.layer_sizes) - 1
    specs = []
    for layer in range(last + 1):
        upstream = (COORDINATOR,) if layer == 0 else layer_ids(config, layer - 1)
        downstream = (COORDINATOR,) if layer == last else layer_ids(config, layer + 1)
        for index, nid in enumerate(layer_ids(config, layer)):
            axon = np.ones(1) if layer == last else parameters.axons[layer][index].copy()
            specs.append(
                NeuronSpec(
                    id=nid,
                    layer=layer,
                    index=index,
                    activation=parameters.activations[layer],
                    axon=axon,
                    bias=float(parameters.biases[layer][index]),
                    learn_bias=parameters.learn_bias[layer],
                    plastic_axon=layer != last,
                    learning_rate=config.training.learning_rate,
                    upstream=upstream,
                    downstream=downstream,
                    updates=updates,
                    optimizer=config.training.optimizer,
                    schedule=config.training.schedule,
                    step_once=config.training.in_flight_step == "once",
                )
            )
    return specs


INBOX = "inbox"  # every neuron binds one PULL socket; each link into it is a PUSH of its own


def socket_name(nid: str, port: str = INBOX) -> str:
    """The socket file of a process's bound port."""
    return f"{nid}.{port}"
