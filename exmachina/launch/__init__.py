"""From a config to a supervised run: check the config, prepare the run directory, write the child
specs, and supervise the neurons (locally, or placed on Ray nodes)."""
