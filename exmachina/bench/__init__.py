"""`python -m exmachina.bench`: how fast the process network is, and against what.

Every figure comes from one invocation, so that ratios compare like with like on a shared, noisy
machine: the raw ZeroMQ ceiling (two processes, one ipc link), the process network on XOR 2-2-1 and
Semeion 256-8-10, the dense NumPy reference on the very same task, CPU per synapse message, start-up
time and memory per neuron, mini-batches and pipelining, and 1 core against 2.

Training runs go through the real entry point (`python -m exmachina.supervisor --config ...`) in a
subprocess with a timeout; a row that fails or times out is reported as failed and the bench goes on.
Whatever a row started is stopped and checked for before the next row begins.

  profiles   how much an invocation measures (--quick, full)
  tasks      the configs trained, messages per batch, the dense reference
  baselines  the ipc ceiling, the round trip, bare networks (workers in ipc)
  runs       training and start-up rows through the real entry point (on tree, the process tree)
  machine    what it ran on
  suite      every row in turn, then results.json
  render     the tables
  cli        the command line
"""
