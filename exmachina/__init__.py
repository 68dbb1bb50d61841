"""exmachina: neural networks in which every neuron is its own operating-system process."""

__version__ = "0.1.0"
