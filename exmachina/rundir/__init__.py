"""What a run writes: its directory (config, metrics, summary, model), the per-neuron checkpoints,
and the per-process logs."""
