"""One neuron's nine steps, driven directly in this process: no neuron process, no socket file.

`Neuron` holds no sockets of its own: its axon and dendrites send on whatever links they are given.
Here those are real ZeroMQ PUSH sockets connected to PULL sockets over `inproc://`, in one context,
so the frames a neuron sends are the very bytes a neuron process would put on its synapses. What the
neuron computes is checked against the rules of `learning.py` written out by hand, and a whole tiny
network of them against the dense `Reference`, online and in mini-batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zmq

from exmachina.config import Config, config_from_dict
from exmachina.model import parameters, topology
from exmachina.model.activations import ACTIVATIONS, LOSSES
from exmachina.model.reference import Reference
from exmachina.model.topology import COORDINATOR, NeuronSpec
from exmachina.network import wire
from exmachina.network.neuron import MAX_PENDING, REMEMBER_DROPPED, Gathering, Neuron, Pending, Unexpected
from exmachina.rundir import checkpoints
from exmachina.rundir.logs import OFF, WARNING, Log
from tests.helpers import assert_same_parameters, xor_config

pytestmark = pytest.mark.unit

QUIET = Log("test", None, OFF)


def tiny_config(output: str = "logistic", **training: object) -> Config:
    """2 identity inputs, 3 tanh hidden, 2 outputs: every layer has several synapses."""
    layers = [
        {"name": "input", "size": 2},
        {"name": "hidden", "size": 3, "activation": "tanh"},
        {"name": "output", "size": 2, "activation": output},
    ]
    return config_from_dict(xor_config(network={"layers": layers}, training={"epochs": 1, **training}))


def spec_of(config: Config, nid: str) -> NeuronSpec:
    return next(s for s in topology.neurons(config, parameters.initial(config)) if s.id == nid)


def frames(pull: zmq.Socket) -> list[list]:
    """Every message queued on `pull`, decoded (inproc delivers a send before it returns)."""
    found = []
    while True:
        try:
            found.append(wire.decode(pull.recv(zmq.NOBLOCK)))
        except zmq.Again:
            return found


def batch(*values: float) -> bytes:
    return wire.payload(np.array(values, dtype=float))


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def wire_up(ctx: zmq.Context, neuron: Neuron) -> tuple[list[zmq.Socket], list[zmq.Socket]]:
    """A PULL per downstream and per upstream peer, each fed by one of the neuron's PUSH links."""
    downs, ups = [], []
    for side, peers, pulls in (("down", neuron.spec.downstream, downs), ("up", neuron.spec.upstream, ups)):
        for i, _ in enumerate(peers):
            pull = ctx.socket(zmq.PULL)
            pull.bind(f"inproc://{neuron.spec.id}-{side}-{i}")
            pulls.append(pull)
    neuron.axon.links = [_push(ctx, f"inproc://{neuron.spec.id}-down-{i}") for i in range(len(downs))]
    neuron.dendrites.links = [_push(ctx, f"inproc://{neuron.spec.id}-up-{i}") for i in range(len(ups))]
    return downs, ups


def _push(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    push = ctx.socket(zmq.PUSH)
    push.sndtimeo = 2000  # a send with no peer left fails the test instead of hanging it
    push.connect(endpoint)
    return push


# -- one hidden neuron ------------------------------------------------------------------------------


@pytest.fixture
def hidden(ctx):
    """hidden.1 of the tiny network: two input synapses, two output synapses, a learned bias."""
    spec = spec_of(tiny_config(learning_rate=0.5), "hidden.1")
    neuron = Neuron(spec, QUIET)
    downs, ups = wire_up(ctx, neuron)
    return neuron, downs, ups


def test_a_neuron_fires_the_activation_of_its_summed_inputs_once_the_last_synapse_reports(hidden):
    neuron, downs, _ = hidden
    w, b = neuron.spec.axon.copy(), neuron.spec.bias
    neuron.on_activity(wire.FORWARD, 7, 1, batch(0.3))
    assert all(frames(pull) == [] for pull in downs), "fired before every input synapse reported"
    neuron.on_activity(wire.FORWARD, 7, 0, batch(-0.2))
    activity = np.tanh(0.3 - 0.2 + b)
    for k, pull in enumerate(downs):
        (message,) = frames(pull)
        assert message[:3] == (wire.FORWARD, 7, neuron.spec.index)
        np.testing.assert_allclose(wire.values(message[3]), [w[k] * activity], rtol=0, atol=1e-15)
    assert neuron.sent == len(downs) and 7 in neuron.fired


def test_a_mini_batch_fires_one_value_per_sample(hidden):
    neuron, downs, _ = hidden
    x0, x1 = np.array([0.1, -1.0, 2.0, 0.0]), np.array([0.5, 0.25, -3.0, 1.0])
    neuron.on_activity(wire.FORWARD, 1, 0, wire.payload(x0))
    neuron.on_activity(wire.FORWARD, 1, 1, wire.payload(x1))
    activity = np.tanh(x0 + x1 + neuron.spec.bias)
    for k, pull in enumerate(downs):
        (message,) = frames(pull)
        np.testing.assert_allclose(wire.values(message[3]), neuron.spec.axon[k] * activity, atol=1e-15)


def test_inference_passes_through_and_keeps_nothing(hidden):
    neuron, downs, _ = hidden
    neuron.on_activity(wire.INFER, 3, 0, batch(0.5))
    neuron.on_activity(wire.INFER, 3, 1, batch(0.5))
    assert [m[0] for pull in downs for m in frames(pull)] == [wire.INFER, wire.INFER]
    assert neuron.fired == {} and neuron.activity_sum == 0.0
    with pytest.raises(Unexpected, match="error for sample 3, which this neuron has not fired"):
        neuron.on_error(3, 0, batch(1.0))


def test_errors_go_back_and_weights_and_bias_descend_as_the_dense_rules_say(hidden):
    neuron, _, ups = hidden
    lr, w, b = neuron.spec.learning_rate, neuron.spec.axon.copy(), neuron.spec.bias
    x = np.array([0.4, -0.7, 1.5])  # the summed input of a batch of three
    neuron.on_activity(wire.FORWARD, 9, 0, wire.payload(x - 0.1))
    neuron.on_activity(wire.FORWARD, 9, 1, wire.payload(np.full(3, 0.1)))
    errors = np.array([[0.2, -0.1, 0.05], [-0.3, 0.4, 0.0]])  # one row per downstream synapse
    assert neuron.on_error(9, 1, wire.payload(errors[1])) is False
    assert neuron.on_error(9, 0, wire.payload(errors[0])) is True
    net = x + b
    activity = np.tanh(net)
    delta = (1 - np.tanh(net) ** 2) * (w @ errors)
    for i, pull in enumerate(ups):
        (message,) = frames(pull)
        assert message[:3] == (wire.BACKWARD, 9, neuron.spec.index), f"to upstream synapse {i}"
        np.testing.assert_allclose(wire.values(message[3]), delta, rtol=0, atol=1e-15)
    np.testing.assert_allclose(neuron.axon.weights, w - lr * (errors @ activity) / 3, rtol=0, atol=1e-15)
    np.testing.assert_allclose(neuron.bias, b - lr * delta.mean(), rtol=0, atol=1e-15)
    assert neuron.updates == 1 and neuron.fired == {}


def test_errors_of_a_sample_use_the_weights_it_was_sent_with(hidden):
    """Two samples in flight: the second's error is computed with the axon of its forward pass, not
    with the axon the first one's update left."""
    neuron, _, ups = hidden
    w = neuron.spec.axon.copy()
    for sample in (1, 2):
        neuron.on_activity(wire.FORWARD, sample, 0, batch(0.3))
        neuron.on_activity(wire.FORWARD, sample, 1, batch(0.1))
    net = 0.4 + neuron.spec.bias
    errors = np.array([0.5, -0.25])
    for sample in (1, 2):
        for k in (0, 1):
            neuron.on_error(sample, k, batch(errors[k]))
    deltas = [wire.values(m[3])[0] for m in frames(ups[0])]
    expected = (1 - np.tanh(net) ** 2) * (w @ errors)
    np.testing.assert_allclose(deltas, [expected, expected], rtol=0, atol=1e-15)
    assert neuron.updates == 2 and not np.allclose(neuron.axon.weights, w)


def test_an_output_neurons_fixed_synapse_and_an_input_neurons_fixed_bias_never_move(ctx):
    config = tiny_config(learning_rate=1.0)
    output, sensor = Neuron(spec_of(config, "output.0"), QUIET), Neuron(spec_of(config, "input.1"), QUIET)
    assert not output.spec.plastic_axon and not sensor.spec.learn_bias
    _pulls = wire_up(ctx, output), wire_up(ctx, sensor)  # held: a collected PULL closes
    for i in range(3):
        output.on_activity(wire.FORWARD, 5, i, batch(0.2))
    bias_before = float(output.bias)
    assert output.on_error(5, 0, batch(0.7))
    np.testing.assert_array_equal(output.axon.weights, [1.0])
    assert float(output.bias) != bias_before  # its bias learns; its synapse to the coordinator does not
    sensor.on_activity(wire.FORWARD, 5, 0, batch(0.9))
    assert sensor.on_error(5, 1, batch(0.0)) is False and sensor.on_error(5, 0, batch(0.0)) is False
    assert sensor.on_error(5, 2, batch(0.3)) is True
    assert float(sensor.bias) == 0.0


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ([("fwd", 4, 0), ("fwd", 4, 1), ("fwd", 4, 0)], "sample 4 already fired"),
        ([("fwd", 4, 0), ("fwd", 4, 0)], "synapse 0 already reported"),
        ([("fwd", 4, 2)], r"no synapse 2 \(have 2\)"),
        ([("fwd", 4, -1)], r"no synapse -1 \(have 2\)"),
        ([("err", 4, 0)], "error for sample 4, which this neuron has not fired"),
        ([("fwd", 4, 0), ("fwd", 4, 1), ("err", 4, 1), ("err", 4, 1)], "synapse 1 already reported"),
        ([("fwd", 4, 0), ("fwd", 4, 1), ("err", 4, 5)], r"no synapse 5 \(have 2\)"),
    ],
)
def test_a_message_that_makes_no_sense_now_is_refused_and_changes_nothing(hidden, steps, problem):
    neuron, _downs, _ups = hidden
    *before, last = steps
    for kind, sample, synapse in before:
        _step(neuron, kind, sample, synapse)
    weights, bias, sent = neuron.axon.weights.copy(), float(neuron.bias), neuron.sent
    with pytest.raises(Unexpected, match=problem):
        _step(neuron, *last)
    np.testing.assert_array_equal(neuron.axon.weights, weights)
    assert float(neuron.bias) == bias and neuron.sent == sent


def _step(neuron: Neuron, kind: str, sample: int, synapse: int) -> None:
    if kind == "fwd":
        neuron.on_activity(wire.FORWARD, sample, synapse, batch(0.1))
    else:
        neuron.on_error(sample, synapse, batch(0.1))


def test_batches_of_different_sizes_for_one_sample_are_refused(hidden):
    neuron, _, _ = hidden
    neuron.on_activity(wire.FORWARD, 2, 0, batch(0.1, 0.2))
    with pytest.raises(Unexpected, match="8 bytes where this sample's batches are 16"):
        neuron.on_activity(wire.FORWARD, 2, 1, batch(0.1))
    with pytest.raises(wire.WireError, match="multiple of 8 bytes, got 5"):
        neuron.on_activity(wire.FORWARD, 3, 1, b"\x00" * 5)


def test_a_forgotten_sample_leaves_no_trace_and_its_stragglers_are_refused(hidden):
    neuron, _downs, _ = hidden
    neuron.on_activity(wire.FORWARD, 1, 0, batch(0.1))  # half-gathered
    neuron.on_activity(wire.FORWARD, 2, 0, batch(0.1))
    neuron.on_activity(wire.FORWARD, 2, 1, batch(0.1))  # fired, errors outstanding
    neuron.on_error(2, 0, batch(0.5))
    for sample in (1, 2):
        neuron.forget(sample)
    assert neuron.fired == {} and len(neuron.dendrites.incoming) == 0 and len(neuron.axon.errors) == 0
    for sample in (1, 2):
        with pytest.raises(Unexpected, match=f"sample {sample} was dropped"):
            neuron.on_activity(wire.FORWARD, sample, 1, batch(0.1))
    with pytest.raises(Unexpected, match="error for sample 2, which this neuron has not fired"):
        neuron.on_error(2, 1, batch(0.5))
    assert neuron.updates == 0


def test_only_the_latest_dropped_samples_are_remembered(hidden):
    neuron, _, _ = hidden
    for sample in range(REMEMBER_DROPPED + 10):
        neuron.forget(sample)
    assert list(neuron.dropped) == list(range(10, REMEMBER_DROPPED + 10))
    neuron.on_activity(wire.FORWARD, 0, 0, batch(0.1))  # long forgotten: welcome again


def test_stray_samples_that_never_get_errors_cannot_grow_memory_without_bound(ctx):
    sensor = Neuron(spec_of(tiny_config(), "input.0"), QUIET)
    _downs, _ = wire_up(ctx, sensor)
    for sample in range(MAX_PENDING + 5):
        sensor.on_activity(wire.FORWARD, sample, 0, batch(1.0))
    assert len(sensor.fired) == MAX_PENDING and min(sensor.fired) == 5
    assert 4 in sensor.dropped


def test_restore_takes_up_a_checkpoints_weights_bias_and_count(hidden):
    neuron, _, _ = hidden
    axon = neuron.axon.weights
    neuron.restore(checkpoints.neuron_state(np.array([0.25, -0.5]), -1.5, 40))
    assert neuron.axon.weights is axon  # updated in place: the axon stays the same array
    np.testing.assert_array_equal(neuron.axon.weights, [0.25, -0.5])
    assert float(neuron.bias) == -1.5 and neuron.updates == neuron.reported_updates == 40


# -- Pending and Gathering --------------------------------------------------------------------------


def test_a_gathering_keeps_synapse_order_whatever_the_arrival_order():
    gathering = Gathering(3, 16)
    assert gathering.put(2, batch(5.0, 6.0)) is False
    assert gathering.put(0, batch(1.0, 2.0)) is False
    assert gathering.put(1, batch(3.0, 4.0)) is True
    np.testing.assert_array_equal(gathering.values(), [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])


@pytest.mark.parametrize(
    ("synapse", "data", "problem"),
    [
        (3, batch(1.0), r"no synapse 3 \(have 3\)"),
        (-1, batch(1.0), r"no synapse -1 \(have 3\)"),
        (0, batch(1.0), "synapse 0 already reported"),
        (1, batch(1.0, 2.0), "16 bytes where this sample's batches are 8"),
    ],
)
def test_a_gathering_refuses_what_does_not_fit(synapse, data, problem):
    gathering = Gathering(3, 8)
    gathering.put(0, batch(0.5))
    with pytest.raises(Unexpected, match=problem):
        gathering.put(synapse, data)
    assert gathering.missing == 2


def test_pending_returns_a_sample_once_complete_and_forgets_it():
    pending = Pending(2, QUIET, "activities")
    assert pending.put(10, 1, batch(2.0)) is None
    assert pending.put(11, 0, batch(7.0)) is None
    np.testing.assert_array_equal(pending.put(10, 0, batch(1.0)), [[1.0], [2.0]])
    assert list(pending) == [11]
    assert pending.put(10, 0, batch(1.0)) is None  # a new gathering: the old one was handed out


def test_pending_refuses_a_payload_that_is_not_float64s_before_keeping_anything():
    pending = Pending(2, QUIET, "errors")
    with pytest.raises(wire.WireError):
        pending.put(1, 0, b"")
    assert len(pending) == 0


def test_pending_forgets_the_oldest_beyond_its_bound_and_says_so(tmp_path):
    log = Log("hidden.0", tmp_path / "hidden.0.log", WARNING)
    pending = Pending(2, log, "errors")
    for sample in range(MAX_PENDING + 2):
        pending.put(sample, 0, batch(1.0))
    log.close()
    assert len(pending) == MAX_PENDING and min(pending) == 2
    lines = (tmp_path / "hidden.0.log").read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        f"forgot half-gathered errors of sample {s} (too many pending)" for s in (0, 1)
    ]


# -- a whole tiny network of neurons against the dense reference ------------------------------------


class InprocNetwork:
    """Every neuron of a config, each link a PUSH to its peer's PULL inbox over inproc, as in the
    process network; this loop hands each frame to the neuron's handler as a neuron process would,
    and plays the coordinator (inputs out, outputs in, the loss gradient back)."""

    def __init__(self, ctx: zmq.Context, config: Config) -> None:
        specs = topology.neurons(config, parameters.initial(config))
        self.config, self.loss = config, LOSSES[config.training.loss]
        self.neurons = {s.id: Neuron(s, QUIET) for s in specs}
        self.inboxes = {}
        for nid in [*self.neurons, COORDINATOR]:
            self.inboxes[nid] = ctx.socket(zmq.PULL)
            self.inboxes[nid].bind(f"inproc://{nid}")
        for n in self.neurons.values():
            n.axon.links = [_push(ctx, f"inproc://{peer}") for peer in n.spec.downstream]
            n.dendrites.links = [_push(ctx, f"inproc://{peer}") for peer in n.spec.upstream]
        last = len(config.layer_sizes) - 1
        self.inputs = [_push(ctx, f"inproc://{nid}") for nid in topology.layer_ids(config, 0)]
        self.outputs = [_push(ctx, f"inproc://{nid}") for nid in topology.layer_ids(config, last)]

    def deliver(self) -> list[list]:
        """Hand every queued frame to its neuron until all is quiet; what reached the coordinator."""
        busy = True
        while busy:
            busy = False
            for nid, neuron in self.neurons.items():
                for kind, sample, sender, data in frames(self.inboxes[nid]):
                    busy = True
                    group = type(sample) is list
                    if kind == wire.BACKWARD:
                        (neuron.on_errors if group else neuron.on_error)(sample, sender, data)
                    else:
                        (neuron.on_activities if group else neuron.on_activity)(kind, sample, sender, data)
        return frames(self.inboxes[COORDINATOR])

    def train_batch(self, sample: int | list[int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One batch (rows are samples) forward and back; the outputs, one row per sample. With a
        list of sample ids, the rows travel as a group of that many one-row batches instead."""
        for i, link in enumerate(self.inputs):
            link.send(wire.encode(wire.FORWARD, sample, 0, wire.payload(x[:, i])))
        outputs = np.empty((len(self.outputs), len(x)))
        arrived = self.deliver()
        assert sorted(m[2] for m in arrived) == list(range(len(self.outputs)))
        for _, _, sender, data in arrived:
            outputs[sender] = wire.values(data)
        gradient = self.loss.grad(outputs, y.T)
        for k, link in enumerate(self.outputs):
            link.send(wire.encode(wire.BACKWARD, sample, 0, wire.payload(gradient[k])))
        errors = self.deliver()
        assert sorted(m[2] for m in errors) == list(range(len(self.inputs)))
        return outputs.T

    def parameters(self) -> parameters.Parameters:
        sizes, names = self.config.layer_sizes, [layer.name for layer in self.config.network.layers]
        neurons = [
            [self.neurons[f"{names[layer]}.{i}"] for i in range(sizes[layer])] for layer in range(len(sizes))
        ]
        axons = [np.array([n.axon.weights for n in layer]) for layer in neurons[:-1]]
        biases = [np.array([float(n.bias) for n in layer]) for layer in neurons]
        return parameters.of_config(self.config, axons, biases)


@pytest.mark.parametrize(
    ("loss", "batch_size", "optimizer", "schedule"),
    [
        ("squared_error", 1, "sgd", "constant"),
        ("squared_error", 4, "sgd", "constant"),
        ("softmax_cross_entropy", 1, "sgd", "constant"),
        ("softmax_cross_entropy", 3, "sgd", "constant"),
        ("squared_error", 1, "momentum", {"name": "step", "every": 2, "gamma": 0.5}),
        ("softmax_cross_entropy", 4, "nesterov", {"name": "cosine", "over": 4, "warmup": 2}),
        ("squared_error", 3, {"name": "adam", "beta1": 0.8}, {"name": "constant", "warmup": 3}),
        ("softmax_cross_entropy", 1, "adam", {"name": "cosine", "over": 8, "floor": 0.1}),
    ],
)
def test_a_network_of_neurons_learns_exactly_what_the_dense_reference_learns(
    ctx, loss, batch_size, optimizer, schedule
):
    output = "identity" if LOSSES[loss].needs_identity_outputs else "logistic"
    config = tiny_config(output, learning_rate=0.7, loss=loss, optimizer=optimizer, schedule=schedule)
    network = InprocNetwork(ctx, config)
    t = config.training
    reference = Reference(parameters.initial(config), loss, t.learning_rate, t.optimizer, t.schedule)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-1, 1, size=(12, 2)), np.eye(2)[rng.integers(0, 2, size=12)]
    for sample, start in enumerate(range(0, len(x), batch_size)):
        rows = slice(start, start + batch_size)
        got = network.train_batch(sample, x[rows], y[rows])
        _, want = reference.train_batch(x[rows], y[rows])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert_same_parameters(network.parameters(), reference.p, atol=1e-12)
    assert all(n.updates == len(range(0, len(x), batch_size)) for n in network.neurons.values())
    assert all(n.fired == {} for n in network.neurons.values())


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_a_neuron_fires_through_the_activation_its_spec_names(ctx, name):
    spec = spec_of(tiny_config(), "output.1")
    neuron = Neuron(dataclasses.replace(spec, activation=name), QUIET)
    downs, _ = wire_up(ctx, neuron)
    for i in range(3):
        neuron.on_activity(wire.FORWARD, 0, i, batch(-0.4 + 0.5 * i))
    (message,) = frames(downs[0])
    assert wire.values(message[3])[0] == pytest.approx(ACTIVATIONS[name].f(0.3 + spec.bias), abs=1e-15)


def test_a_group_of_samples_in_flight_learns_what_a_mini_batch_learns_at_that_many_times_the_rate(ctx):
    """A group fires as one, with the same weights for all its samples, then each sample's error
    moves the weights in turn: the sum of their gradients, which is a mini-batch of the group's
    size at that many times the rate."""
    config = tiny_config(learning_rate=0.3)
    network = InprocNetwork(ctx, config)
    group = 4
    reference = Reference(parameters.initial(config), config.training.loss, 0.3 * group)
    rng = np.random.default_rng(7)
    x, y = rng.uniform(-1, 1, size=(12, 2)), np.eye(2)[rng.integers(0, 2, size=12)]
    for start in range(0, len(x), group):
        rows = slice(start, start + group)
        got = network.train_batch(list(range(start, start + group)), x[rows], y[rows])
        _, want = reference.train_batch(x[rows], y[rows])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert_same_parameters(network.parameters(), reference.p, atol=1e-12)
    assert all(n.updates == len(x) for n in network.neurons.values())
    assert all(n.fired == {} for n in network.neurons.values())


def test_a_group_sends_one_frame_per_synapse_with_what_each_sample_alone_would_send(ctx):
    """Two samples as a group and the same two one by one (both forward, then both back): the very
    same values on every synapse, the same weights and bias after, in a frame per synapse each way."""
    spec = spec_of(tiny_config(learning_rate=0.5), "hidden.1")
    grouped, single = Neuron(spec, QUIET), Neuron(dataclasses.replace(spec, id="twin.1"), QUIET)
    (g_downs, g_ups), (s_downs, s_ups) = wire_up(ctx, grouped), wire_up(ctx, single)
    inputs, errors = np.array([[0.3, -0.6], [0.1, 0.9]]), np.array([[0.5, -0.25], [0.125, 0.75]])
    for synapse in (1, 0):
        grouped.on_activities(wire.FORWARD, [5, 6], synapse, wire.payload(inputs[synapse]))
        for i, sample in enumerate((5, 6)):
            single.on_activity(wire.FORWARD, sample, synapse, batch(inputs[synapse, i]))
    assert grouped.sent == len(g_downs) and single.sent == 2 * len(s_downs)
    _same_traffic(g_downs, s_downs, wire.FORWARD)
    assert grouped.on_errors([5, 6], 1, wire.payload(errors[1])) == 0
    assert grouped.on_errors([5, 6], 0, wire.payload(errors[0])) == 2
    for synapse in (1, 0):
        for i, sample in enumerate((5, 6)):
            single.on_error(sample, synapse, batch(errors[synapse, i]))
    _same_traffic(g_ups, s_ups, wire.BACKWARD)
    np.testing.assert_array_equal(grouped.axon.weights, single.axon.weights)
    assert float(grouped.bias) == float(single.bias) and grouped.updates == single.updates == 2
    assert grouped.fired == single.fired == {}


def _same_traffic(grouped: list[zmq.Socket], single: list[zmq.Socket], kind: int) -> None:
    for g_pull, s_pull in zip(grouped, single):
        (group,) = frames(g_pull)
        assert type(group) is (wire.Errors if kind == wire.BACKWARD else wire.Activities)
        assert group.samples == [5, 6]
        assert [wire.encode(*one) for one in wire.singles(group)] == [wire.encode(*m) for m in frames(s_pull)]


def test_a_group_refuses_samples_it_cannot_take_and_forgets_as_one(hidden):
    neuron, _, _ = hidden
    neuron.on_activities(wire.FORWARD, [1, 2], 0, batch(0.1, 0.2))
    with pytest.raises(Unexpected, match="24 bytes where this sample's batches are 16"):
        neuron.on_activities(wire.FORWARD, [1, 2], 1, batch(0.1, 0.2, 0.3))
    with pytest.raises(Unexpected, match="error for sample 1, which this neuron has not fired"):
        neuron.on_errors([1, 2], 0, batch(0.1, 0.2))
    neuron.forget(2)
    assert len(neuron.dendrites.incoming) == 0, "the group's gathering goes with any of its samples"
    with pytest.raises(Unexpected, match="sample 2 was dropped"):
        neuron.on_activities(wire.FORWARD, [1, 2], 1, batch(0.1, 0.2))
    neuron.on_activities(wire.FORWARD, [3, 4], 0, batch(0.1, 0.2))
    neuron.on_activities(wire.FORWARD, [3, 4], 1, batch(0.1, 0.2))
    with pytest.raises(Unexpected, match="sample 4 already fired"):
        neuron.on_activities(wire.FORWARD, [4, 5], 0, batch(0.1, 0.2))
    assert set(neuron.fired) == {3, 4} and neuron.updates == 0
