"""Read-only tools that look at a run, live or finished: logs, one neuron's state, the process
table, a sample's trace, the browser viewer and the PNG report."""
