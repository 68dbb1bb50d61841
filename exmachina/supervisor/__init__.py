"""`python -m exmachina.supervisor --config configs/xor.yaml`: train a network, one process per neuron.

A thin entry: the work is done by `exmachina.launch`.
"""

from exmachina.launch.learn import main

__all__ = ["main"]
