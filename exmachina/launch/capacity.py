"""What the machine can hold: a network too big for it is refused in one line before anything starts.

Each neuron is a process here, so a network asks for one process, a few megabytes and a few file
descriptors per neuron, and the coordinator holds sockets to all of them. Asking the kernel for more
fails late and in pieces (a restart storm, a killed process); asking these questions first costs
nothing.
"""

from __future__ import annotations

import itertools
import resource
from pathlib import Path

import psutil

from exmachina.config import Config, ConfigError

NEURON_BYTES = 5 * 2**20  # a neuron process's own memory (forked from a preloaded zygote)
WEIGHT_BYTES = 8 * 4  # a weight is a float64, held by its neuron, checkpoints, the model, the snapshot
EXTRA_PROCESSES = 4  # the supervisor, its zygote, the coordinator, a spare for a restart


def check(config: Config) -> None:
    """Raise ConfigError naming the biggest layer when the machine cannot hold the network."""
    if config.placement.engine != "local":
        return  # the neurons live on the cluster's nodes, which Ray sizes
    neurons = sum(config.layer_sizes)
    _check_processes(config, neurons + EXTRA_PROCESSES)
    _check_descriptors(config, neurons)
    _check_memory(config, neurons)


def _biggest_layer(config: Config) -> str:
    sizes = config.layer_sizes
    return f"network.layers[{sizes.index(max(sizes))}].size"


def _refuse(config: Config, message: str) -> None:
    raise ConfigError(f"{config.source}: {_biggest_layer(config)}: {message}")


def _check_processes(config: Config, needed: int) -> None:
    limits = {"kernel.pid_max": _read_int("/proc/sys/kernel/pid_max")}
    limits["kernel.threads-max"] = _read_int("/proc/sys/kernel/threads-max")
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft != resource.RLIM_INFINITY:
        limits["ulimit -u (RLIMIT_NPROC)"] = soft
    running = len(psutil.pids())
    for name, limit in limits.items():
        if limit is not None and running + needed > limit:
            _refuse(
                config,
                f"{needed} processes (one per neuron) do not fit: {running} run already, {name} is {limit}",
            )


def _check_descriptors(config: Config, neurons: int) -> None:
    """The coordinator's share is the biggest: a control link to every neuron, more to the edges."""
    sizes = config.layer_sizes
    sockets = 2 * neurons + sizes[0] + sizes[-1] + 4
    needed = 2 * sockets + 64
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and needed > hard:
        _refuse(
            config,
            f"the coordinator needs about {needed} file descriptors for {neurons} neurons, the hard "
            f"limit is {hard} (ulimit -Hn)",
        )


def _check_memory(config: Config, neurons: int) -> None:
    sizes = config.layer_sizes
    weights = sum(a * b for a, b in itertools.pairwise(sizes))
    needed = neurons * NEURON_BYTES + weights * WEIGHT_BYTES
    available = psutil.virtual_memory().available
    if needed > available:
        _refuse(
            config,
            f"{neurons} neurons and {weights} weights need about {needed / 2**30:.1f} GiB of memory, "
            f"{available / 2**30:.1f} GiB is available",
        )


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
