"""The optimizers and the learning-rate schedules of `learning.py` against steps worked out by hand,
their config keys, and one neuron stepping its own axon and bias with them over real inproc sockets
(and resuming its moments from a checkpoint)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import zmq

from exmachina.config import ConfigError, config_from_dict
from exmachina.model import parameters, topology
from exmachina.model.learning import Optimizer, Schedule, descend, moments, rate_at
from exmachina.network import wire
from exmachina.network.neuron import Neuron
from exmachina.rundir import checkpoints
from exmachina.rundir.logs import OFF, Log
from tests.helpers import xor_config

pytestmark = pytest.mark.unit

QUIET = Log("test", None, OFF)
ADAM = Optimizer("adam", beta1=0.9, beta2=0.999, eps=1e-8)


def steps(optimizer: Optimizer, gradients: list[float], rate: float, start: float = 1.0) -> list[float]:
    """The parameter after each gradient, through `descend` on a one-element array."""
    parameter = np.array([start])
    kept = moments(optimizer, parameter)
    seen = []
    for step, g in enumerate(gradients, start=1):
        descend(parameter, np.array([g]), rate, optimizer, kept, step)
        seen.append(float(parameter[0]))
    return seen


# -- the rules, by hand -----------------------------------------------------------------------------


def test_sgd_steps_against_the_gradient():
    assert steps(Optimizer("sgd"), [0.5, -1.0], 0.1) == pytest.approx([0.95, 1.05], abs=1e-15)
    assert moments(Optimizer("sgd"), np.zeros(3)) == []


def test_momentum_keeps_a_velocity():
    # v1 = 0.5, w1 = 1 - 0.1 * 0.5; v2 = 0.9 * 0.5 + 0.5 = 0.95, w2 = w1 - 0.1 * 0.95
    got = steps(Optimizer("momentum", momentum=0.9), [0.5, 0.5], 0.1)
    assert got == pytest.approx([0.95, 0.855], abs=1e-15)


def test_nesterov_steps_by_the_gradient_and_the_velocity_ahead():
    # v1 = 0.5, w1 = 1 - 0.1 * (0.5 + 0.9 * 0.5); v2 = 0.95, w2 = w1 - 0.1 * (0.5 + 0.9 * 0.95)
    got = steps(Optimizer("nesterov", momentum=0.9), [0.5, 0.5], 0.1)
    assert got == pytest.approx([0.905, 0.905 - 0.1355], abs=1e-15)


def test_adam_corrects_the_bias_of_both_moments():
    # step 1: m = 0.1 * 0.5, v = 0.001 * 0.25; corrected, m_hat = 0.5 and v_hat = 0.25
    w1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    # step 2: m = 0.9 * 0.05 - 0.1, v = 0.999 * 0.00025 + 0.001
    m_hat, v_hat = (0.045 - 0.1) / (1 - 0.9**2), (0.00024975 + 0.001) / (1 - 0.999**2)
    w2 = w1 - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert steps(ADAM, [0.5, -1.0], 0.1) == pytest.approx([w1, w2], abs=1e-15)
    assert w1 == pytest.approx(0.9, abs=1e-8), "Adam's first step is the rate, whatever the gradient's size"


@pytest.mark.parametrize("optimizer", [Optimizer("sgd"), Optimizer("momentum", momentum=0.8), ADAM])
def test_a_layer_steps_as_its_neurons_each_step_their_own_row(optimizer):
    """The reference steps a layer's matrix, a neuron its own row: the same numbers."""
    rng = np.random.default_rng(2)
    layer, gradients = rng.normal(size=(3, 4)), rng.normal(size=(5, 3, 4))
    rows = [row.copy() for row in layer]
    layer_kept, rows_kept = moments(optimizer, layer), [moments(optimizer, row) for row in rows]
    for step, g in enumerate(gradients, start=1):
        descend(layer, g, 0.05, optimizer, layer_kept, step)
        for i, row in enumerate(rows):
            descend(row, g[i], 0.05, optimizer, rows_kept[i], step)
    np.testing.assert_array_equal(layer, np.array(rows))


def test_a_bias_steps_in_place_as_a_0d_array():
    bias = np.array(0.5)
    kept = moments(ADAM, bias)
    descend(bias, np.array(2.0), 0.1, ADAM, kept, 1)
    assert float(bias) == pytest.approx(0.4, abs=1e-8) and float(kept[0]) == pytest.approx(0.2)


# -- the schedules, by hand -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Schedule(), {0: 2.0, 1000: 2.0}),
        (Schedule("step", every=10, gamma=0.5), {0: 2.0, 9: 2.0, 10: 1.0, 25: 0.5}),
        (Schedule("cosine", over=10, floor=0.1), {0: 2.0, 5: 1.1, 10: 0.2, 50: 0.2}),
        (Schedule("constant", warmup=4), {0: 0.5, 1: 1.0, 3: 2.0, 4: 2.0, 100: 2.0}),
        (Schedule("step", warmup=4, every=10, gamma=0.1), {0: 0.5, 3: 2.0, 4: 2.0, 13: 2.0, 14: 0.2}),
        (Schedule("cosine", warmup=2, over=4, floor=0.0), {0: 1.0, 1: 2.0, 2: 2.0, 4: 1.0, 6: 0.0}),
    ],
)
def test_the_rate_of_an_update_follows_from_its_count(schedule, expected):
    got = {done: rate_at(schedule, 2.0, done) for done in expected}
    assert got == pytest.approx(expected, abs=1e-15)


# -- the config keys --------------------------------------------------------------------------------


def training(**keys: object):
    return config_from_dict(xor_config(training={"learning_rate": 0.5, "epochs": 1, **keys})).training


def test_an_optimizer_or_schedule_by_its_name_alone_takes_its_defaults():
    t = training(optimizer="adam", schedule="constant")
    assert t.optimizer == Optimizer("adam", beta1=0.9, beta2=0.999, eps=1e-8)
    assert training().optimizer == Optimizer("sgd") and training().schedule == Schedule()
    assert training(optimizer={"name": "nesterov"}).optimizer.momentum == 0.9
    assert training(schedule={"name": "step", "every": 5}).schedule.gamma == 0.5
    assert training(optimizer={"name": "adam", "eps": "1e-6"}).optimizer.eps == 1e-6  # YAML 1.1's string


def test_a_resolved_config_reads_back_the_same():
    """A run's config.yaml holds the resolved config; a resume reads it again."""
    raw = xor_config(training={"learning_rate": 0.5, "epochs": 1, "optimizer": "momentum"})
    resolved = config_from_dict(raw)
    again = config_from_dict(resolved.to_dict())
    assert again.training == resolved.training


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"optimizer": "rmsprop"}, "training.optimizer.name: must be one of sgd, momentum, nesterov, adam"),
        (
            {"optimizer": {"name": "sgd", "beta1": 0.9}},
            "training.optimizer.beta1: belongs to adam, not to sgd",
        ),
        (
            {"optimizer": {"name": "adam", "momentum": 0.9}},
            "training.optimizer.momentum: belongs to momentum, nesterov, not to adam",
        ),
        (
            {"optimizer": {"name": "adam", "beta1": 1.0}},
            r"training.optimizer.beta1: must be in \[0, 1\), got 1.0",
        ),
        ({"optimizer": {"name": "adam", "beta2": -0.1}}, r"training.optimizer.beta2: must be in \[0, 1\)"),
        ({"optimizer": {"name": "adam", "beta2": float("nan")}}, r"training.optimizer.beta2: .* got nan"),
        ({"optimizer": {"name": "momentum", "momentum": 1.5}}, r"training.optimizer.momentum: must be in"),
        (
            {"optimizer": {"name": "adam", "eps": 0.0}},
            "training.optimizer.eps: must be a finite number above 0",
        ),
        ({"optimizer": {"name": "adam", "eps": float("inf")}}, "training.optimizer.eps: must be a finite"),
        ({"optimizer": {"name": "adam", "eps": "tiny"}}, "training.optimizer.eps: expected a number"),
        ({"optimizer": {"name": "adam", "lr": 0.1}}, "training.optimizer.lr: unknown key"),
        ({"schedule": "step"}, "training.schedule.every: required by the step schedule"),
        ({"schedule": "cosine"}, "training.schedule.over: required by the cosine schedule"),
        ({"schedule": {"name": "step", "every": 0}}, "training.schedule.every: must be at least 1, got 0"),
        (
            {"schedule": {"name": "step", "every": 5, "gamma": 0}},
            r"training.schedule.gamma: must be in \(0, 1\]",
        ),
        (
            {"schedule": {"name": "cosine", "over": 9, "floor": 2}},
            r"training.schedule.floor: must be in \[0, 1\]",
        ),
        ({"schedule": {"name": "constant", "over": 9}}, "training.schedule.over: belongs to cosine, not to"),
        ({"schedule": {"name": "constant", "warmup": -1}}, "training.schedule.warmup: must be >= 0, got -1"),
        ({"schedule": {"name": "linear"}}, "training.schedule.name: must be one of constant, step, cosine"),
    ],
)
def test_a_bad_optimizer_or_schedule_is_one_line_naming_the_key(keys, problem):
    with pytest.raises(ConfigError, match=f"^<memory>: {problem}") as caught:
        training(**keys)
    assert "\n" not in str(caught.value)


# -- one neuron, over real inproc sockets -----------------------------------------------------------


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def hidden_neuron(
    ctx: zmq.Context, optimizer: Optimizer, schedule: Schedule, tag: str, step_once: bool = False
) -> Neuron:
    """hidden.1 of a 2-3-2 network: two input synapses, two output synapses, a learned bias; every
    link a PUSH to a PULL of this test (kept on the neuron, so that they live as long as it)."""
    layers = [
        {"name": "input", "size": 2},
        {"name": "hidden", "size": 3, "activation": "tanh"},
        {"name": "output", "size": 2},
    ]
    config = config_from_dict(
        xor_config(network={"layers": layers}, training={"learning_rate": 0.3, "epochs": 1})
    )
    spec = next(s for s in topology.neurons(config, parameters.initial(config)) if s.id == "hidden.1")
    neuron = Neuron(
        topology.NeuronSpec(
            **{**spec.__dict__, "optimizer": optimizer, "schedule": schedule, "step_once": step_once}
        ),
        QUIET,
    )
    neuron.pulls = []
    for side, count in (("down", 2), ("up", 2)):
        links = []
        for i in range(count):
            pull = ctx.socket(zmq.PULL)
            pull.bind(f"inproc://{tag}-{side}-{i}")
            push = ctx.socket(zmq.PUSH)
            push.sndtimeo = 2000
            push.connect(f"inproc://{tag}-{side}-{i}")
            neuron.pulls.append(pull)
            links.append(push)
        if side == "down":
            neuron.axon.links = links
        else:
            neuron.dendrites.links = links
    return neuron


def one_update(neuron: Neuron, sample: int, x: np.ndarray, errors: np.ndarray) -> None:
    neuron.on_activity(wire.FORWARD, sample, 0, wire.payload(x - 0.25))
    neuron.on_activity(wire.FORWARD, sample, 1, wire.payload(np.full(len(x), 0.25)))
    for k in (1, 0):
        neuron.on_error(sample, k, wire.payload(errors[k]))


SAMPLES = [
    (np.array([0.4, -0.7, 1.5]), np.array([[0.2, -0.1, 0.05], [-0.3, 0.4, 0.0]])),
    (np.array([-0.2, 0.9, 0.1]), np.array([[-0.5, 0.3, 0.2], [0.1, 0.1, -0.6]])),
    (np.array([1.0, 0.0, -1.0]), np.array([[0.05, 0.2, -0.3], [0.4, -0.2, 0.1]])),
]


def test_a_neuron_steps_its_axon_and_bias_by_adam_at_the_scheduled_rate(ctx):
    schedule = Schedule("step", warmup=2, every=1, gamma=0.5)  # rates 0.15 and 0.3 warming up, 0.3
    neuron = hidden_neuron(ctx, ADAM, schedule, "adam")
    w, b = neuron.spec.axon.copy(), float(neuron.spec.bias)
    m_w, v_w, m_b, v_b = np.zeros(2), np.zeros(2), 0.0, 0.0
    for step, ((x, errors), rate) in enumerate(zip(SAMPLES, (0.15, 0.3, 0.3)), start=1):
        one_update(neuron, step, x, errors)
        net = x + b
        g_w = errors @ np.tanh(net) / len(x)
        g_b = ((1 - np.tanh(net) ** 2) * (w @ errors)).mean()  # the error with the weights it went out with
        m_w, v_w = 0.9 * m_w + 0.1 * g_w, 0.999 * v_w + 0.001 * g_w**2
        m_b, v_b = 0.9 * m_b + 0.1 * g_b, 0.999 * v_b + 0.001 * g_b**2
        c1, c2 = 1 - 0.9**step, 1 - 0.999**step
        w = w - rate * (m_w / c1) / (np.sqrt(v_w / c2) + 1e-8)
        b = b - rate * (m_b / c1) / (math.sqrt(v_b / c2) + 1e-8)
        np.testing.assert_allclose(neuron.axon.weights, w, rtol=0, atol=1e-14)
        assert float(neuron.bias) == pytest.approx(b, abs=1e-14)
    assert neuron.updates == 3


def test_a_group_stepping_once_moves_the_weights_by_its_mean_gradient(ctx):
    """in_flight_step: once. Two samples in flight (batches of 3) step Adam once by the mean of
    their six columns, at the rate of count 0, with the bias correction of count 2."""
    neuron = hidden_neuron(ctx, ADAM, Schedule("step", warmup=2, every=1, gamma=0.5), "once", True)
    w, b = neuron.spec.axon.copy(), float(neuron.spec.bias)
    (x1, e1), (x2, e2) = SAMPLES[:2]
    x, errors = np.concatenate([x1, x2]), np.concatenate([e1, e2], axis=1)
    neuron.on_activities(wire.FORWARD, [7, 8], 0, wire.payload(x - 0.25))
    neuron.on_activities(wire.FORWARD, [7, 8], 1, wire.payload(np.full(len(x), 0.25)))
    assert neuron.on_errors([7, 8], 1, wire.payload(errors[1])) == 0
    assert neuron.on_errors([7, 8], 0, wire.payload(errors[0])) == 2
    net = x + b
    g_w = errors @ np.tanh(net) / len(x)
    g_b = ((1 - np.tanh(net) ** 2) * (w @ errors)).mean()
    c1, c2, rate = 1 - 0.9**2, 1 - 0.999**2, 0.15  # the warm-up's first rate
    w = w - rate * (0.1 * g_w / c1) / (np.sqrt(0.001 * g_w**2 / c2) + 1e-8)
    b = b - rate * (0.1 * g_b / c1) / (math.sqrt(0.001 * g_b**2 / c2) + 1e-8)
    np.testing.assert_allclose(neuron.axon.weights, w, rtol=0, atol=1e-14)
    assert float(neuron.bias) == pytest.approx(b, abs=1e-14)
    assert neuron.updates == 2


@pytest.mark.parametrize("optimizer", [Optimizer("nesterov", momentum=0.9), ADAM])
def test_a_neuron_restored_from_its_checkpoint_resumes_its_moments(ctx, tmp_path, optimizer):
    schedule = Schedule("cosine", over=3, floor=0.2)
    whole, restarted = (hidden_neuron(ctx, optimizer, schedule, f"{optimizer.name}-{i}") for i in (0, 1))
    for sample, (x, errors) in enumerate(SAMPLES[:2]):
        one_update(whole, sample, x, errors)
    n = whole
    state = checkpoints.neuron_state(n.axon.weights, float(n.bias), n.updates, n.axon.moments, n.bias_moments)
    checkpoints.save(tmp_path, "hidden.1", n.updates, state)
    restarted.restore(checkpoints.latest(tmp_path, "hidden.1"))  # through the file, as a restart does
    x, errors = SAMPLES[2]
    one_update(whole, 2, x, errors)
    one_update(restarted, 2, x, errors)
    np.testing.assert_array_equal(restarted.axon.weights, whole.axon.weights)
    assert float(restarted.bias) == float(whole.bias) and restarted.updates == whole.updates == 3


def test_a_checkpoint_without_the_optimizers_moments_is_refused(ctx):
    neuron = hidden_neuron(ctx, ADAM, Schedule(), "refused")
    plain = checkpoints.neuron_state(np.array([0.1, 0.2]), 0.5, 7)  # an sgd neuron's: no moments
    with pytest.raises(
        checkpoints.CheckpointError, match="holds 0\\+0 moments, the adam optimizer keeps 2\\+2"
    ):
        neuron.restore(plain)
    assert neuron.updates == 0
