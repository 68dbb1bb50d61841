"""A rehearsal: every neuron code path run once in the zygote, before any neuron is forked from it.

Neurons share the zygote's memory copy-on-write, and a page stays shared until a process writes to it.
CPython writes to code as it first runs it: the specializing interpreter rewrites each function's
bytecode into its quickened form, and first calls fill caches in numpy and msgpack. Rehearsed here,
those writes happen once and are shared, instead of being made again in each of a thousand children
(measured: 0.4-0.5 MB less unique memory per neuron). Only memory is touched: no socket, no file.
"""

from __future__ import annotations

import logging

import numpy as np

from exmachina import wire
from exmachina.activations import ACTIVATIONS
from exmachina.neuron import Neuron
from exmachina.topology import NeuronSpec

# Enough for the interpreter to quicken and specialize every function on the path (it does so after
# a handful of calls), in a few milliseconds.
SAMPLES = 64


class _Sink:
    """A link that swallows frames: the rehearsal's stand-in for a PUSH socket."""

    def send(self, frame: bytes) -> None:
        pass


def rehearse(samples: int = SAMPLES) -> None:
    """Train one small neuron per activation, online and in mini-batches, through the wire format."""
    log = logging.getLogger("exmachina.rehearsal")  # no handler, level WARNING: as a quiet neuron's
    for activation in ACTIVATIONS:
        for batch in (1, 4):
            spec = NeuronSpec(
                id="rehearsal.0",
                layer=1,
                index=0,
                activation=activation,
                axon=np.full(2, 0.1),
                bias=0.0,
                learn_bias=True,
                plastic_axon=True,
                learning_rate=0.1,
                upstream=("a", "b", "c"),
                downstream=("x", "y"),
            )
            neuron = Neuron(spec, log)
            neuron.axon.links = [_Sink(), _Sink()]
            neuron.dendrites.links = [_Sink(), _Sink(), _Sink()]
            values = wire.payload(np.full(batch, 0.5))
            for sample in range(samples):
                for synapse in range(3):
                    message = wire.decode(wire.encode(wire.FORWARD, sample, synapse, values))
                    neuron.on_activity(message[0], message[1], message[2], message[3])
                for synapse in range(2):
                    message = wire.decode(wire.encode(wire.BACKWARD, sample, synapse, values))
                    neuron.on_error(message[1], message[2], message[3])
                message = wire.decode(wire.encode(wire.INFER, sample, 0, values))
                for synapse in range(3):
                    neuron.on_activity(message[0], message[1], synapse, message[3])
