"""The math, with no I/O: activations and losses against finite differences, the learning rules
against their definitions, the reference's step against the gradient of the loss, the seeded
parameters and the topology's ids and wiring."""

from __future__ import annotations

import numpy as np
import pytest

from exmachina.config import config_from_dict
from exmachina.model import learning, parameters, topology
from exmachina.model.activations import ACTIVATIONS, LOSSES, accuracy, predictions
from exmachina.model.reference import Reference
from tests.helpers import xor_config

pytestmark = pytest.mark.unit

# relu's kink at 0 is kept away from: its derivative there is a convention, not a limit
POINTS = np.array([-3.0, -1.2, -0.3, 0.2, 0.7, 2.5])
H = 1e-6


def numeric_derivative(f, x: np.ndarray) -> np.ndarray:
    return (f(x + H) - f(x - H)) / (2 * H)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_each_activations_derivative_is_its_slope(name):
    activation = ACTIVATIONS[name]
    np.testing.assert_allclose(activation.df(POINTS), numeric_derivative(activation.f, POINTS), atol=1e-8)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_take_a_scalar_or_a_layer_alike(name):
    activation = ACTIVATIONS[name]
    layer = activation.f(POINTS)
    assert layer.shape == POINTS.shape
    assert [float(activation.f(p)) for p in POINTS] == pytest.approx(list(layer), abs=0)


def test_activation_values_at_known_points():
    assert ACTIVATIONS["logistic"].f(0.0) == 0.5
    assert ACTIVATIONS["tanh"].f(0.0) == 0.0
    np.testing.assert_array_equal(ACTIVATIONS["relu"].f(np.array([-2.0, 0.0, 3.0])), [0.0, 0.0, 3.0])
    net = np.array([1.0, 2.0])
    assert ACTIVATIONS["identity"].f(net) is not net  # a new array: a neuron may keep it


@pytest.mark.parametrize("name", LOSSES)
def test_each_losss_gradient_is_its_slope(name):
    loss = LOSSES[name]
    rng = np.random.default_rng(2)
    a, y = rng.normal(size=4), np.eye(4)[1]
    numeric = [(loss.value(a + H * e, y) - loss.value(a - H * e, y)) / (2 * H) for e in np.eye(len(a))]
    np.testing.assert_allclose(loss.grad(a, y), numeric, atol=1e-8)


def test_losses_give_one_value_per_sample_of_a_batch():
    a = np.array([[0.2, 0.9], [0.8, 0.1]])  # outputs along axis 0, samples along axis 1
    y = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(
        LOSSES["squared_error"].value(a, y), [0.5 * (0.04 + 0.04), 0.5 * (0.01 + 0.01)]
    )
    ce = LOSSES["softmax_cross_entropy"].value(a, y)
    assert ce.shape == (2,)
    np.testing.assert_allclose(ce[0], -np.log(np.exp(0.8) / (np.exp(0.2) + np.exp(0.8))))


def test_softmax_cross_entropy_stays_finite_for_huge_logits():
    loss = LOSSES["softmax_cross_entropy"]
    a, y = np.array([1000.0, -1000.0, 0.0]), np.array([0.0, 1.0, 0.0])
    assert loss.value(a, y) == pytest.approx(2000.0)
    np.testing.assert_allclose(loss.grad(a, y), [1.0, -1.0, 0.0], atol=1e-12)


def test_predictions_and_accuracy():
    np.testing.assert_array_equal(predictions(np.array([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1]])), [1, 0])
    np.testing.assert_array_equal(predictions(np.array([[0.2], [0.6], [0.5]])), [0, 1, 0])  # > 0.5 is 1
    assert accuracy(np.array([[0.2], [0.6], [0.9], [0.4]]), np.array([[0.0], [1.0], [0.0], [1.0]])) == 0.5
    assert accuracy(np.eye(3), np.eye(3)[[0, 2, 1]]) == pytest.approx(1 / 3)


# -- the learning rules -----------------------------------------------------------------------------


def test_fire_adds_the_bias_then_squashes():
    net, activity = learning.fire(np.array([0.5, -1.0]), 0.25, ACTIVATIONS["tanh"])
    np.testing.assert_array_equal(net, [0.75, -0.75])
    np.testing.assert_array_equal(activity, np.tanh([0.75, -0.75]))


def test_error_is_the_slope_times_the_weighted_downstream_errors():
    net = np.array([0.3, -0.6])  # a batch of two
    axon = np.array([0.5, -2.0, 1.0])
    downstream = np.array([[0.1, 0.2], [0.3, -0.1], [-0.5, 0.0]])
    want = [ACTIVATIONS["logistic"].df(net[b]) * sum(axon * downstream[:, b]) for b in range(2)]
    np.testing.assert_allclose(learning.error(net, ACTIVATIONS["logistic"], axon, downstream), want)


def test_gradients_are_batch_means_for_one_neuron_and_for_a_layer():
    rng = np.random.default_rng(4)
    activity, downstream = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))  # 3 neurons, 2 after, B=5
    layer = learning.axon_gradient(activity, downstream)
    assert layer.shape == (3, 2)
    for i in range(3):
        one = learning.axon_gradient(activity[i], downstream)
        np.testing.assert_allclose(layer[i], one, rtol=0, atol=1e-15)
        for k in range(2):
            assert one[k] == pytest.approx(np.mean(activity[i] * downstream[k]), abs=1e-15)
    assert learning.bias_gradient(downstream)[1] == pytest.approx(downstream[1].mean(), abs=1e-15)


def test_descend_moves_a_parameter_in_place():
    weights = np.array([1.0, -1.0])
    same = weights
    learning.descend(weights, np.array([0.5, 0.25]), 0.1)
    assert same is weights
    np.testing.assert_allclose(weights, [0.95, -1.025], rtol=0, atol=1e-15)


def tiny(loss: str = "squared_error", output: str = "logistic", inputs: dict | None = None, **network):
    layers = [
        {"name": "input", "size": 3, "activation": "logistic", **(inputs or {})},
        {"name": "hidden", "size": 4, "activation": "tanh"},
        {"name": "output", "size": 2, "activation": output},
    ]
    training = {"learning_rate": 0.1, "epochs": 1, "loss": loss}
    return config_from_dict(xor_config(network={"layers": layers, **network}, training=training))


def mean_loss(config, p: parameters.Parameters, x: np.ndarray, y: np.ndarray) -> float:
    outputs = Reference(p, config.training.loss, 0.0).predict(x)
    return float(np.mean(LOSSES[config.training.loss].value(outputs.T, y.T)))


@pytest.mark.parametrize(
    ("loss", "output"), [("squared_error", "logistic"), ("softmax_cross_entropy", "identity")]
)
def test_one_reference_step_is_minus_the_learning_rate_times_the_gradient_of_the_mean_loss(loss, output):
    """Backpropagation checked against the definition: each weight's and bias's step equals the
    finite-difference slope of the batch's mean loss (the input layer's biases too, learned here)."""
    config = tiny(loss, output, inputs={"learn_bias": True, "bias_init": [-0.5, 0.5]})
    rng = np.random.default_rng(8)
    x, y = rng.uniform(-1, 1, size=(5, 3)), np.eye(2)[rng.integers(0, 2, size=5)]
    before = parameters.initial(config)
    reference = Reference(before.copy(), loss, 0.1)
    reference.train_batch(x, y)
    for group in ("axons", "biases"):
        for layer, (old, new) in enumerate(zip(getattr(before, group), getattr(reference.p, group))):
            slope = np.zeros_like(old)
            for index in np.ndindex(old.shape):
                slope[index] = _partial(config, before, group, layer, index, x, y)
            np.testing.assert_allclose(new - old, -0.1 * slope, atol=1e-9, err_msg=f"{group}[{layer}]")


def _partial(config, p: parameters.Parameters, group: str, layer: int, index: tuple, x, y) -> float:
    values = []
    for step in (H, -H):
        moved = p.copy()
        getattr(moved, group)[layer][index] += step
        values.append(mean_loss(config, moved, x, y))
    return (values[0] - values[1]) / (2 * H)


# -- parameters and topology ------------------------------------------------------------------------


def test_the_initial_draw_is_fixed_by_the_seed_and_stays_in_its_ranges():
    config = tiny(weight_init=[-0.3, 0.2], bias_init=[1.0, 2.0])
    a, b = parameters.initial(config), parameters.initial(config)
    for x, y in zip(a.axons + a.biases, b.axons + b.biases):
        np.testing.assert_array_equal(x, y)
    other = parameters.initial(config_from_dict({**config.to_dict(), "seed": config.seed + 1}))
    assert not np.array_equal(a.axons[0], other.axons[0])
    assert [w.shape for w in a.axons] == [(3, 4), (4, 2)] and a.sizes == [3, 4, 2]
    assert all(((w >= -0.3) & (w <= 0.2)).all() for w in a.axons)
    np.testing.assert_array_equal(a.biases[0], 0.0)  # the input layer's default: no bias
    assert all(((v >= 1.0) & (v <= 2.0)).all() for v in a.biases[1:])
    assert a.activations == ["logistic", "tanh", "logistic"] and a.learn_bias == [False, True, True]


def test_parameters_round_trip_through_the_model_file(tmp_path):
    p = parameters.initial(tiny())
    p.save(tmp_path / "model.npz")
    back = parameters.Parameters.load(tmp_path / "model.npz")
    for x, y in zip(p.axons + p.biases, back.axons + back.biases):
        np.testing.assert_array_equal(x, y)
    assert (back.activations, back.learn_bias, back.names) == (p.activations, p.learn_bias, p.names)
    assert [f.name for f in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left


def test_neuron_ids_and_wiring_follow_the_layers():
    config = tiny()
    p = parameters.initial(config)
    specs = topology.neurons(config, p, updates=12)
    assert [s.id for s in specs] == [
        "input.0", "input.1", "input.2",
        "hidden.0", "hidden.1", "hidden.2", "hidden.3",
        "output.0", "output.1",
    ]  # fmt: skip
    by_id = {s.id: s for s in specs}
    assert by_id["input.2"].upstream == (topology.COORDINATOR,)
    assert by_id["input.2"].downstream == ("hidden.0", "hidden.1", "hidden.2", "hidden.3")
    assert by_id["hidden.3"].upstream == ("input.0", "input.1", "input.2")
    assert by_id["output.1"].downstream == (topology.COORDINATOR,)
    np.testing.assert_array_equal(by_id["hidden.2"].axon, p.axons[1][2])
    assert by_id["hidden.2"].bias == p.biases[1][2] and by_id["hidden.2"].index == 2
    out = by_id["output.0"]
    assert not out.plastic_axon and list(out.axon) == [1.0] and out.learn_bias
    assert all(s.updates == 12 and s.learning_rate == 0.1 for s in specs)
    assert topology.layer_ids(config, 2) == ("output.0", "output.1")
    assert topology.socket_name("hidden.3") == "hidden.3.inbox"


def test_a_specs_axon_is_its_own_copy():
    config = tiny()
    p = parameters.initial(config)
    spec = topology.neurons(config, p)[0]
    spec.axon[0] += 1.0
    assert spec.axon[0] != p.axons[0][0][0]
