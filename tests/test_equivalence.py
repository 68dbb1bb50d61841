"""The process network and the dense NumPy reference are the same algorithm: weights agree to 1e-9."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exmachina.config import load_config
from exmachina.data import datasets
from exmachina.model import parameters
from exmachina.model.parameters import Parameters
from exmachina.model.reference import Reference
from tests.helpers import assert_same_parameters, reference_after, run_learn, write_config, xor_config


def random_csv(path, rows: int, inputs: int, targets: int, one_hot: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(rows, inputs))
    if one_hot:
        y = np.eye(targets)[rng.integers(0, targets, size=rows)]
    else:
        y = rng.uniform(0, 1, size=(rows, targets))
    np.savetxt(path, np.hstack([x, y]), delimiter=",", fmt="%.17g")


def layers(*spec):
    return {"layers": [dict(zip(("name", "size", "activation"), s)) for s in spec]}


TOPOLOGIES = {
    # one hidden layer, squared error, learned biases: the XOR default
    "xor-tanh-logistic": xor_config(training={"learning_rate": 0.5, "epochs": 100}),
    # two hidden layers, relu then tanh, softmax cross-entropy on identity outputs
    "two-hidden-relu-tanh-softmax": {
        "name": "deep",
        "seed": 11,
        "network": layers(
            ("input", 3, "identity"), ("h1", 4, "relu"), ("h2", 3, "tanh"), ("out", 2, "identity")
        ),
        "training": {"learning_rate": 0.1, "epochs": 10, "loss": "softmax_cross_entropy"},
        "data": {"source": "csv", "path": "onehot.csv", "targets": 2},
    },
    # the original's style: logistic input neurons with fixed biases U(-3,-1), nothing learns a bias
    "logistic-inputs-frozen-biases": {
        "name": "original",
        "seed": 5,
        "network": {
            **layers(("input", 3, "logistic"), ("hidden", 3, "logistic"), ("output", 2, "logistic")),
            "bias_init": [-3.0, -1.0],
            "learn_biases": False,
        },
        "training": {"learning_rate": 2.0, "epochs": 10},
        "data": {"source": "csv", "path": "regress.csv", "targets": 2},
    },
    # mini-batches of 8 (30 rows: the last batch of each epoch has 6), equal to the dense mini-batch step
    "mini-batch-8-two-hidden": {
        "name": "batched",
        "seed": 12,
        "network": layers(
            ("input", 3, "identity"), ("h1", 4, "tanh"), ("h2", 3, "logistic"), ("out", 2, "identity")
        ),
        "training": {"learning_rate": 0.2, "epochs": 80, "loss": "softmax_cross_entropy", "batch_size": 8},
        "data": {"source": "csv", "path": "onehot.csv", "targets": 2},
    },
    # identity everywhere, with a learned input-layer bias too
    "identity-learned-input-bias": {
        "name": "linear",
        "seed": 8,
        "network": {
            "layers": [
                {
                    "name": "input",
                    "size": 3,
                    "activation": "identity",
                    "bias_init": [-0.5, 0.5],
                    "learn_bias": True,
                },
                {"name": "hidden", "size": 2, "activation": "identity"},
                {"name": "output", "size": 2, "activation": "identity"},
            ]
        },
        "training": {"learning_rate": 0.05, "epochs": 10},
        "data": {"source": "csv", "path": "regress.csv", "targets": 2},
    },
}


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_process_network_equals_reference(tmp_path, name):
    random_csv(tmp_path / "onehot.csv", rows=30, inputs=3, targets=2, one_hot=True)
    random_csv(tmp_path / "regress.csv", rows=30, inputs=3, targets=2, one_hot=False, seed=1)
    path = write_config(tmp_path, TOPOLOGIES[name])
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").glob(f"{TOPOLOGIES[name]['name']}-*"))
    reference, config = reference_after(path)
    samples = config.training.epochs * len(datasets.load(config))
    assert samples >= 300, "equivalence must hold over hundreds of samples"
    assert samples / config.training.batch_size >= 300, "and over hundreds of updates"
    trained = Parameters.load(run / "model.npz")
    assert_same_parameters(trained, reference.p)
    # and the weights really moved: this is not a comparison of two untouched initial draws
    initial = parameters.initial(config)
    assert max(np.abs(a - b).max() for a, b in zip(trained.axons, initial.axons)) > 1e-3


# Every optimizer online and in mini-batches of 3 (XOR's 4 rows: batches of 3 and 1), each with a
# schedule, so that the rates and moments of every neuron follow the reference's update by update.
OPTIMIZED = [
    ("momentum", 1, {"name": "step", "every": 100, "gamma": 0.5}),
    ("momentum", 3, {"name": "cosine", "over": 300, "floor": 0.1, "warmup": 20}),
    ({"name": "nesterov", "momentum": 0.8}, 1, {"name": "constant", "warmup": 50}),
    ("nesterov", 3, {"name": "step", "every": 60, "gamma": 0.7, "warmup": 10}),
    ("adam", 1, {"name": "cosine", "over": 250, "warmup": 30}),
    ({"name": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-7}, 3, "constant"),
]


@pytest.mark.parametrize(
    ("optimizer", "batch_size", "schedule"),
    OPTIMIZED,
    ids=[f"{o if isinstance(o, str) else o['name']}-batch{b}" for o, b, _ in OPTIMIZED],
)
def test_every_optimizer_online_and_batched_equals_the_reference(tmp_path, optimizer, batch_size, schedule):
    epochs = 80 if batch_size == 1 else 150  # 320 and 300 updates
    training = {"learning_rate": 0.05, "epochs": epochs, "batch_size": batch_size}
    config = xor_config(training={**training, "optimizer": optimizer, "schedule": schedule})
    path = write_config(tmp_path, config)
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    trained = Parameters.load(next((tmp_path / "runs").glob("xor-*")) / "model.npz")
    reference, resolved = reference_after(path)
    assert_same_parameters(trained, reference.p)
    assert reference.updates >= 300
    # the optimizer made a difference: plain SGD at the same rate lands elsewhere
    sgd = Reference(parameters.initial(resolved), "squared_error", 0.05)
    train = datasets.load(resolved)
    for epoch in range(epochs):
        sgd.train_epoch(train, epoch, resolved.seed, batch_size=batch_size)
    assert max(np.abs(a - b).max() for a, b in zip(trained.axons, sgd.p.axons)) > 1e-2


@pytest.mark.parametrize("in_flight", [1, 3])
def test_same_seed_gives_bit_identical_weights(tmp_path, in_flight):
    """Online, and pipelined too: batches in flight travel as groups that each start from the same
    weights in every neuron, so the timing of the messages changes nothing."""
    models = []
    for attempt in ("a", "b"):
        directory = tmp_path / attempt
        directory.mkdir()
        training = {"learning_rate": 0.5, "epochs": 80, "max_in_flight": in_flight}
        path = write_config(directory, xor_config(training=training))
        result = run_learn(path)
        assert result.returncode == 0, result.stderr
        models.append(Parameters.load(next((directory / "runs").glob("xor-*")) / "model.npz"))
    for a, b in zip(models[0].axons + models[0].biases, models[1].axons + models[1].biases):
        assert np.array_equal(a, b)


def test_k_samples_in_flight_learn_what_mini_batches_of_k_learn_at_k_times_the_rate(tmp_path):
    """K in flight go forward as one group with the same weights, then each sample's error moves the
    weights in turn (weight stashing): the sum of the group's gradients, which is the reference's
    mini-batch of K at K times the rate."""
    k, lr = 2, 0.5
    training = {"learning_rate": lr, "epochs": 150, "max_in_flight": k}
    path = write_config(tmp_path, xor_config(training=training))
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    config = load_config(path)
    reference = Reference(parameters.initial(config), config.training.loss, lr * k)
    data = datasets.load(config)
    for epoch in range(config.training.epochs):
        reference.train_epoch(data, epoch, config.seed, config.training.shuffle, batch_size=k)
    trained = Parameters.load(next((tmp_path / "runs").glob("xor-*")) / "model.npz")
    assert_same_parameters(trained, reference.p)


def test_a_group_in_flight_stepping_once_learns_what_the_reference_groups_learn(tmp_path):
    """in_flight_step: once. Three in flight (XOR's 4 rows: groups of 3 and 1) move every weight
    once per group by the group's mean gradient, through Adam, with a warm-up counted in samples:
    the reference's `group` of 3, update by update."""
    k, epochs = 3, 150
    optimizer = {"name": "adam", "beta1": 0.5, "beta2": 0.8}
    training = {"learning_rate": 0.05, "epochs": epochs, "max_in_flight": k, "in_flight_step": "once"}
    schedule = {"name": "constant", "warmup": 40}
    path = write_config(
        tmp_path, xor_config(training={**training, "optimizer": optimizer, "schedule": schedule})
    )
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    config = load_config(path)
    t = config.training
    reference = Reference(parameters.initial(config), t.loss, t.learning_rate, t.optimizer, t.schedule)
    data = datasets.load(config)
    for epoch in range(epochs):
        reference.train_epoch(data, epoch, config.seed, t.shuffle, group=k)
    assert reference.updates == 4 * epochs
    trained = Parameters.load(next((tmp_path / "runs").glob("xor-*")) / "model.npz")
    assert_same_parameters(trained, reference.p)


def test_reference_learns_xor():
    from exmachina.config import config_from_dict
    from tests.helpers import xor_config as make

    config = config_from_dict(make())
    reference = Reference(parameters.initial(config), "squared_error", 0.5)
    data = datasets.builtin("xor")
    for epoch in range(800):
        reference.train_epoch(data, epoch, config.seed)
    loss, acc = reference.evaluate(data)
    assert acc == 1.0 and loss < 0.01


def test_pipelined_training_still_learns(tmp_path):
    """max_in_flight > 1: several samples in the network at once, each neuron using the weights a
    sample saw going forward for its error (weight stashing). Not exact SGD, but it must learn."""
    config = xor_config(
        training={"learning_rate": 0.5, "epochs": 1500, "max_in_flight": 4, "target_loss": 0.01}
    )
    result = run_learn(write_config(tmp_path, config))
    assert result.returncode == 0, result.stderr
    summary = json.loads(next((tmp_path / "runs").glob("xor-*")).joinpath("summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["final_loss"] < 0.02, summary
