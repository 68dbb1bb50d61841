"""The process network, the hot path: the neuron and the coordinator processes, the wire format
between them, and their ZeroMQ sockets (ipc or tcp, with CURVE)."""
