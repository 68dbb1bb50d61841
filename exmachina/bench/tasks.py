"""The tasks the bench trains (XOR, Semeion 256-8-10) as configs, what one batch of them costs in
synapse messages, and the dense NumPy reference timed on the very same task."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from exmachina.config import config_from_dict
from exmachina.data import datasets
from exmachina.model import parameters
from exmachina.model.reference import Reference


def messages_per_batch(sizes: list[int]) -> int:
    """Synapse messages one batch (one sample, online) costs, forward and backward: the coordinator
    to each input neuron, every layer to the next, each output neuron to the coordinator, and the
    same links again with errors on the way back."""
    links = sizes[0] + sum(a * b for a, b in itertools.pairwise(sizes)) + sizes[-1]
    return 2 * links


def xor_config(samples: int, hidden: int = 2, log_level: str = "off") -> dict:
    """XOR on a 2-hidden-1 network; its 4 rows are an epoch, so `samples` makes whole epochs."""
    return {
        "name": "bench_xor",
        "seed": 1,
        "network": {
            "layers": [
                {"name": "input", "size": 2},
                {"name": "hidden", "size": hidden, "activation": "tanh"},
                {"name": "output", "size": 1, "activation": "logistic"},
            ]
        },
        "training": {"learning_rate": 0.5, "epochs": max(1, samples // 4)},
        "data": {"source": "xor"},
        "runtime": {"log_level": log_level},
    }


def semeion_config(
    samples: int | None,
    data: Path,
    batch_size: int = 1,
    max_in_flight: int = 1,
    epochs: int = 1,
    holdout: float = 0.0,
) -> dict:
    """The original job (configs/semeion-original.yaml), on `samples` seeded random rows (None:
    every row), `holdout` of them held out."""
    return {
        "name": "bench_semeion",
        "seed": 1,
        "network": {
            "layers": [
                {
                    "name": "input",
                    "size": 256,
                    "activation": "logistic",
                    "bias_init": [-3.0, -1.0],
                    "learn_bias": False,
                },
                {"name": "hidden", "size": 8, "activation": "logistic"},
                {"name": "output", "size": 10, "activation": "logistic"},
            ],
            "weight_init": [-1.0, 1.0],
            "bias_init": [-3.0, -1.0],
            "learn_biases": False,
        },
        "training": {
            "learning_rate": 2.0,
            "epochs": epochs,
            "batch_size": batch_size,
            "max_in_flight": max_in_flight,
        },
        "data": {
            "source": "semeion",
            "path": str(Path(data).resolve()),
            "holdout": holdout,
            "limit": samples,
        },
        "runtime": {"log_level": "off"},
    }


def reference_holdout(config: dict) -> float:
    """Held-out accuracy of the dense reference after the config's epochs: what the exact process
    network reaches too, online or with groups in flight stepping once (equal to 1e-9 in the tests)."""
    c = config_from_dict(config)
    train, holdout = datasets.split(datasets.load(c), c.data.holdout, c.seed)
    t = c.training
    model = Reference(parameters.initial(c), t.loss, t.learning_rate, t.optimizer, t.schedule)
    group = t.max_in_flight if t.in_flight_step == "once" else 1
    for epoch in range(t.epochs):
        model.train_epoch(train, epoch, c.seed, t.shuffle, t.batch_size, group)
    return model.evaluate(holdout)[1]


def reference_rate(config: dict, min_samples: int, min_seconds: float) -> dict:
    """Samples/s of the dense NumPy reference on the same task: same data, initial weights, epoch
    order and batch size; it repeats epochs until it has run long enough to time."""
    c = config_from_dict(config)
    data = datasets.load(c)
    model = Reference(parameters.initial(c), c.training.loss, c.training.learning_rate)
    size = c.training.batch_size
    samples, epoch = 0, 0
    started = time.perf_counter()
    while True:
        order = datasets.epoch_order(c.seed, epoch, len(data), c.training.shuffle)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            model.train_batch(data.inputs[rows], data.targets[rows])
            samples += len(rows)
        epoch += 1
        seconds = time.perf_counter() - started
        if samples >= min_samples and seconds >= min_seconds:
            return {
                "samples": samples,
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "batch_size": size,
            }
