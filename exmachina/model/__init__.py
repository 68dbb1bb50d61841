"""The math of the network, with no I/O: activations and losses, the learning rule, the layer
topology, the weights, and the dense NumPy reference that the process network must equal."""
