"""Config validation, table-driven: every bad config is one exact line naming the key at fault, and
the good ones resolve to the values the rest of the program reads."""

from __future__ import annotations

import pytest

from exmachina.config import STARTUP_TIMEOUT_S, ConfigError, config_from_dict, load_config
from exmachina.data import SEMEION_DATA
from tests.helpers import xor_config

pytestmark = pytest.mark.unit

NAME = "^[a-z][a-z0-9_]*$"
TCP = {"transport": "tcp"}


def layers(*specs: dict) -> dict:
    return {"layers": list(specs)}


def three(**hidden: object) -> dict:
    return layers(
        {"name": "input", "size": 2}, {"name": "hidden1", "size": 3, **hidden}, {"name": "output", "size": 1}
    )


def ray(**placement: object) -> dict:
    return {"engine": "ray", **placement}


def without(key: str) -> dict:
    config = xor_config()
    del config[key]
    return config


BAD = {
    "name not a run directory": (
        xor_config(name="Xor"),
        f"name: must match {NAME} (it names the run directory), got 'Xor'",
    ),
    "one layer": (
        xor_config(network=layers({"name": "input", "size": 2})),
        "network.layers: need at least an input and an output layer",
    ),
    "empty layer": (
        xor_config(network=three(size=0)),
        "network.layers[1].size: a layer needs at least one neuron, got 0",
    ),
    "layer name": (
        xor_config(network=three(name="Hidden")),
        f"network.layers[1].name: must match {NAME}, got 'Hidden'",
    ),
    "layer name taken": (
        xor_config(network=three(name="input")),
        "network.layers[1].name: layer name 'input' is already taken",
    ),
    "layer named coordinator": (
        xor_config(network=three(name="coordinator")),
        "network.layers[1].name: layer name 'coordinator' is already taken",
    ),
    "layer bias range upside down": (
        xor_config(network=three(bias_init=[1, -1])),
        "network.layers[1].bias_init: low end above high end: [1.0, -1.0]",
    ),
    "weight range upside down": (
        xor_config(network={**three(), "weight_init": [0.5, 0.1]}),
        "network.weight_init: low end above high end: [0.5, 0.1]",
    ),
    "learning rate zero": (
        xor_config(training={"learning_rate": 0}),
        "training.learning_rate: must be positive, got 0.0",
    ),
    "no epochs": (xor_config(training={"epochs": 0}), "training.epochs: must be at least 1, got 0"),
    "empty batch": (xor_config(training={"batch_size": 0}), "training.batch_size: must be at least 1, got 0"),
    "nothing in flight": (
        xor_config(training={"max_in_flight": 0}),
        "training.max_in_flight: must be at least 1, got 0",
    ),
    "stall timeout": (xor_config(training={"stall_timeout": -1}), "training.stall_timeout: must be positive"),
    "softmax over logistic outputs": (
        xor_config(training={"loss": "softmax_cross_entropy"}),
        "network.layers[2].activation: loss softmax_cross_entropy takes raw logits: "
        "the output layer must use activation identity",
    ),
    "csv without a file": (
        xor_config(data={"source": "csv", "targets": 1}),
        "data.path: the csv source needs a file path",
    ),
    "built-in with a file": (
        xor_config(data={"path": "x.csv"}),
        "data.path: the built-in source 'xor' takes no path",
    ),
    "csv without targets": (
        xor_config(data={"source": "csv", "path": "x.csv"}),
        "data.targets: give the number of target columns for a csv source, and only for it",
    ),
    "targets for a built-in": (
        xor_config(data={"targets": 1}),
        "data.targets: give the number of target columns for a csv source, and only for it",
    ),
    "no target columns": (
        xor_config(data={"source": "csv", "path": "x.csv", "targets": 0}),
        "data.targets: must be at least 1, got 0",
    ),
    "everything held out": (xor_config(data={"holdout": 1}), "data.holdout: must be in [0, 1), got 1.0"),
    "no rows": (xor_config(data={"limit": 0}), "data.limit: must be at least 1, got 0"),
    "negative restarts": (
        xor_config(runtime={"max_restarts": -1}),
        "runtime.max_restarts: restart intensity needs max_restarts >= 0 and restart_period > 0",
    ),
    "no restart period": (
        xor_config(runtime={"restart_period": 0}),
        "runtime.max_restarts: restart intensity needs max_restarts >= 0 and restart_period > 0",
    ),
    "negative snapshots": (
        xor_config(runtime={"snapshot_every": -1}),
        "runtime.checkpoint_every: snapshot_every and checkpoint_every must be >= 0",
    ),
    "logs that never rotate": (
        xor_config(runtime={"log_backups": 0}),
        "runtime.log_backups: must be at least 1 (a log rotates into its backups), got 0",
    ),
    "no stats interval": (
        xor_config(runtime={"stats_interval": 0}),
        "runtime.stats_interval: must be positive",
    ),
    "ray over ipc": (
        xor_config(placement=ray(nodes=["a"])),
        "runtime.transport: neurons on several hosts need transport: tcp (ipc is one host)",
    ),
    "nodes for a local run": (
        xor_config(placement={"layers": {"input": "a"}}),
        "placement.layers: only a ray placement places neurons on nodes",
    ),
    "unknown layer": (
        xor_config(runtime=TCP, placement=ray(nodes=["a"], layers={"hiden1": "b"})),
        "placement.layers.hiden1: no such layer (layers: input, hidden1, output)",
    ),
    "unknown neuron": (
        xor_config(runtime=TCP, placement=ray(nodes=["a"], neurons={"hidden1.3": "b"})),
        "placement.neurons.hidden1.3: no such neuron (ids are layer.index, e.g. hidden.0)",
    ),
    "round robin over nothing": (
        xor_config(runtime=TCP, placement=ray()),
        "placement.nodes: round_robin needs the list of node labels to deal neurons over",
    ),
    "by layer with one missing": (
        xor_config(runtime=TCP, placement=ray(rule="by_layer", layers={"input": "a", "output": "b"})),
        "placement.layers: by_layer needs a node for each layer, none for hidden1",
    ),
    "explicit without neurons": (
        xor_config(runtime=TCP, placement=ray(rule="explicit")),
        "placement.neurons: explicit needs a mapping of neuron id -> node label",
    ),
    "startup timeout": (
        xor_config(runtime=TCP, placement=ray(nodes=["a"], startup_timeout=0)),
        "placement.startup_timeout: must be positive, got 0.0",
    ),
    "ray restarts": (
        xor_config(runtime=TCP, placement=ray(nodes=["a"], max_restarts=-2)),
        "placement.max_restarts: must be >= 0, got -2",
    ),
    # the schema: keys, types and choices
    "not a mapping": ([1, 2], "top level: expected a mapping, got list"),
    "empty file": (None, "top level: expected a mapping, got nothing"),
    "missing seed": (without("seed"), "seed: missing required key"),
    "missing learning rate": (
        {**xor_config(), "training": {"epochs": 3}},
        "training.learning_rate: missing required key",
    ),
    "unknown top-level key": (
        xor_config(trainig={}),
        "trainig: unknown key (known: name, seed, network, training, data, runtime, placement)",
    ),
    "unknown nested key": (
        xor_config(runtime={"log_lvl": "info"}),
        "runtime.log_lvl: unknown key (known: transport, host, curve, log_level, log_max_bytes, "
        "log_backups, runs_dir, stats_interval, snapshot_every, checkpoint_every, max_restarts, "
        "restart_period, allow_clear_tcp)",
    ),
    "integer as text": (
        xor_config(training={"epochs": "ten"}),
        "training.epochs: expected an integer, got 'ten'",
    ),
    "integer as boolean": (
        xor_config(training={"epochs": True}),
        "training.epochs: expected an integer, got True",
    ),
    "integer as float": (xor_config(seed=1.5), "seed: expected an integer, got 1.5"),
    "number as text": (
        xor_config(training={"learning_rate": "fast"}),
        "training.learning_rate: expected a number, got 'fast'",
    ),
    "boolean as text": (
        xor_config(training={"shuffle": "yes"}),
        "training.shuffle: expected true or false, got 'yes'",
    ),
    "string as number": (xor_config(name=3), "name: expected a string, got 3"),
    "layers not a list": (
        xor_config(network={"layers": {"input": 2}}),
        "network.layers: expected a list, got dict",
    ),
    "layer not a mapping": (
        xor_config(network=layers("input", {"name": "output", "size": 1})),
        "network.layers[0]: expected a mapping, got str",
    ),
    "range of one": (
        xor_config(network={**three(), "weight_init": [1]}),
        "network.weight_init: expected a list of 2 numbers, got [1]",
    ),
    "range of text": (
        xor_config(network={**three(), "bias_init": [0, "x"]}),
        "network.bias_init[1]: expected a number, got 'x'",
    ),
    "size as float in a list": (
        xor_config(network=layers({"name": "input", "size": 2}, {"name": "o", "size": 1.5})),
        "network.layers[1].size: expected an integer, got 1.5",
    ),
    "unknown activation": (
        xor_config(network=three(activation="sine")),
        "network.layers[1].activation: must be one of identity, logistic, tanh, relu, got 'sine'",
    ),
    "unknown transport": (
        xor_config(runtime={"transport": "udp"}),
        "runtime.transport: must be one of ipc, tcp, got 'udp'",
    ),
    "unknown source": (
        xor_config(data={"source": "mnist"}),
        "data.source: must be one of xor, and, or, semeion, csv, got 'mnist'",
    ),
    "placement layers as a list": (
        xor_config(placement={"layers": ["input"]}),
        "placement.layers: expected a mapping, got list",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_config_is_one_exact_line_naming_the_key(case):
    raw, message = BAD[case]
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, source="bad.yaml")
    assert str(caught.value) == f"bad.yaml: {message}"


GOOD = {
    "xor as written": xor_config(),
    "every activation": xor_config(network=three(activation="relu")),
    "softmax over raw logits": xor_config(
        network=layers(
            {"name": "input", "size": 2},
            {"name": "hidden1", "size": 3},
            {"name": "out", "size": 2, "activation": "identity"},
        ),
        training={"loss": "softmax_cross_entropy"},
    ),
    "pipelined mini-batches": xor_config(training={"batch_size": 4, "max_in_flight": 3, "target_loss": None}),
    "a held-out share of a limited set": xor_config(data={"holdout": 0.25, "limit": 3}),
    "csv": xor_config(data={"source": "csv", "path": "rows.csv", "targets": 2}),
    "semeion with no path": xor_config(data={"source": "semeion"}),
    "tcp": xor_config(runtime=TCP),
    "ray round robin": xor_config(runtime=TCP, placement=ray(nodes=["a", "b"])),
    "ray by layer": xor_config(
        runtime=TCP, placement=ray(rule="by_layer", layers={"input": "a", "hidden1": "b", "output": "a"})
    ),
    "ray explicit": xor_config(runtime=TCP, placement=ray(rule="explicit", neurons={"hidden1.2": "b"})),
    "checkpoints only at epoch ends": xor_config(runtime={"checkpoint_every": 0, "snapshot_every": 0}),
}


@pytest.mark.parametrize("case", GOOD)
def test_a_good_config_validates_and_round_trips(case):
    config = config_from_dict(GOOD[case], source="good.yaml")
    resolved = config.to_dict()  # what a run directory keeps: every default written out
    assert config_from_dict(resolved, source="good.yaml").to_dict() == resolved


def test_defaults_resolve_per_layer():
    config = config_from_dict(xor_config(network={**three(), "bias_init": [-2, 2], "learn_biases": False}))
    assert [config.activation(i) for i in range(3)] == ["identity", "logistic", "logistic"]
    assert config.bias_init(0) == (0.0, 0.0) and config.bias_init(1) == (-2.0, 2.0)
    assert [config.learns_bias(i) for i in range(3)] == [False, False, False]
    plain = config_from_dict(xor_config(network=three(activation="tanh")))
    assert plain.activation(1) == "tanh" and plain.learns_bias(1) and not plain.learns_bias(0)
    assert plain.layer_sizes == [2, 3, 1]


def test_curve_resolves_from_transport_and_reads_yaml_on_off():
    assert not config_from_dict(xor_config()).uses_curve
    assert config_from_dict(xor_config(runtime=TCP)).uses_curve
    assert not config_from_dict(xor_config(runtime={**TCP, "curve": False})).uses_curve  # YAML's bare off
    on = config_from_dict(xor_config(runtime={"curve": True}))
    assert on.runtime.curve == "on" and on.uses_curve


def test_the_startup_timeout_grows_with_a_ray_network():
    assert config_from_dict(xor_config()).startup_timeout == STARTUP_TIMEOUT_S
    placed = config_from_dict(xor_config(runtime=TCP, placement=ray(nodes=["a"])))
    assert placed.startup_timeout == STARTUP_TIMEOUT_S + 2.0 * 6
    fixed = config_from_dict(xor_config(runtime=TCP, placement=ray(nodes=["a"], startup_timeout=5)))
    assert fixed.startup_timeout == 5.0


def test_a_neurons_node_is_its_own_then_its_layers_then_dealt_round_robin():
    placement = config_from_dict(
        xor_config(
            runtime=TCP, placement=ray(nodes=["a", "b"], layers={"output": "c"}, neurons={"hidden1.1": "d"})
        )
    ).placement
    assert placement.node_of("hidden1.1", "hidden1", 3) == "d"
    assert placement.node_of("output.0", "output", 5) == "c"
    assert [placement.node_of(f"input.{i}", "input", i) for i in range(3)] == ["a", "b", "a"]
    assert config_from_dict(xor_config()).placement.node_of("input.0", "input", 0) is None


def test_a_data_path_is_relative_to_the_config_file_and_semeion_defaults_to_the_packaged_file(tmp_path):
    csv = config_from_dict(
        xor_config(data={"source": "csv", "path": "rows.csv", "targets": 1}), str(tmp_path / "c.yaml")
    )
    assert csv.data_path() == tmp_path / "rows.csv"
    assert csv.to_dict()["data"]["path"] == str((tmp_path / "rows.csv").resolve())
    home = config_from_dict(xor_config(data={"source": "semeion", "path": "~/digits.data"}), "c.yaml")
    assert home.data_path().is_absolute() and home.data_path().name == "digits.data"
    packaged = config_from_dict(xor_config(data={"source": "semeion"}), str(tmp_path / "c.yaml"))
    assert packaged.data_path() == SEMEION_DATA and SEMEION_DATA.is_file()
    assert packaged.to_dict()["data"]["path"] is None  # resolved again at each load, wherever installed
    assert config_from_dict(xor_config()).data_path() is None


def test_config_files_that_cannot_be_read_or_parsed_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert str(caught.value) == f"{tmp_path / 'absent.yaml'}: cannot read config: No such file or directory"
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: xor\nseed: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    assert str(caught.value) == f"{broken}: line 3: not valid YAML"
    written = tmp_path / "typo.yaml"
    written.write_text("name: xor\nseed: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(written)
    assert str(caught.value) == f"{written}: network: missing required key"
