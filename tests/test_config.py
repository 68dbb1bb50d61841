"""Bad input: one clear line naming file and key, exit 2, no run directory, no process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exmachina.config import ConfigError, config_from_dict, load_config
from tests.helpers import REPO, run_learn, write_config, xor_config


def with_layers(*sizes):
    return {"layers": [{"name": n, "size": s} for n, s in zip(("input", "hidden1", "output"), sizes)]}


BAD = {
    "unknown key": (xor_config(training={"learnin_rate": 0.5}), "training.learnin_rate: unknown key"),
    "wrong type": (
        xor_config(training={"learning_rate": 0.5, "epochs": "ten"}),
        "training.epochs: expected an integer",
    ),
    "zero-sized layer": (xor_config(network=with_layers(2, 0, 1)), "network.layers[1].size"),
    "width mismatch": (xor_config(network=with_layers(3, 2, 1)), "network.layers[0].size: 3 input neurons"),
    "missing data file": (
        xor_config(
            network=with_layers(256, 4, 10), data={"source": "semeion", "path": "nowhere/semeion.data"}
        ),
        "nowhere/semeion.data: cannot read data file",
    ),
    "unknown activation": (
        xor_config(
            network={
                "layers": [{"name": "input", "size": 2}, {"name": "out", "size": 1, "activation": "sine"}]
            }
        ),
        "network.layers[1].activation: must be one of",
    ),
    "softmax on logistic outputs": (
        xor_config(training={"learning_rate": 0.5, "epochs": 5, "loss": "softmax_cross_entropy"}),
        "network.layers[2].activation: loss softmax_cross_entropy takes raw logits",
    ),
    "missing required key": ({"name": "x", "seed": 1}, "network: missing required key"),
    "logs that never rotate": (
        xor_config(runtime={"log_backups": 0}),
        "runtime.log_backups: must be at least 1",
    ),
    "ray over ipc": (
        xor_config(placement={"engine": "ray", "nodes": ["a"]}),
        "runtime.transport: neurons on several hosts need transport: tcp",
    ),
    "placement on an unknown layer": (
        xor_config(
            runtime={"transport": "tcp"},
            placement={"engine": "ray", "rule": "by_layer", "layers": {"input": "a", "hiden1": "b"}},
        ),
        "placement.layers.hiden1: no such layer",
    ),
    "by_layer with a layer left out": (
        xor_config(
            runtime={"transport": "tcp"},
            placement={"engine": "ray", "rule": "by_layer", "layers": {"input": "a", "hidden1": "b"}},
        ),
        "placement.layers: by_layer needs a node for each layer, none for output",
    ),
    "round robin without nodes": (
        xor_config(runtime={"transport": "tcp"}, placement={"engine": "ray"}),
        "placement.nodes: round_robin needs the list of node labels",
    ),
    "explicit on an unknown neuron": (
        xor_config(
            runtime={"transport": "tcp"},
            placement={"engine": "ray", "rule": "explicit", "neurons": {"hidden1.7": "b"}},
        ),
        "placement.neurons.hidden1.7: no such neuron",
    ),
    "nodes for a local run": (
        xor_config(placement={"nodes": ["a", "b"]}),
        "placement.nodes: only a ray placement places neurons on nodes",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_config_is_one_line_exit_2_and_leaves_nothing(tmp_path, case):
    config, expected = BAD[case]
    path = write_config(tmp_path, config)
    result = run_learn(path, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0] or "semeion.data" in lines[0]
    assert not (tmp_path / "runs").exists(), "a bad config must not leave a run directory"


def test_missing_and_malformed_config_files(tmp_path):
    result = run_learn(tmp_path / "absent.yaml", timeout=30)
    assert result.returncode == 2 and "absent.yaml: cannot read config" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    result = run_learn(broken, timeout=30)
    assert result.returncode == 2 and "broken.yaml: line" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_shipped_configs_are_valid():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.data_path() is None or config.data_path().exists(), path


def test_resolved_config_round_trips():
    config = config_from_dict(xor_config())
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.to_dict() == config.to_dict()
    assert config.activation(0) == "identity" and not config.learns_bias(0) and config.learns_bias(1)


def test_errors_name_the_key_for_nested_lists():
    with pytest.raises(ConfigError, match=r"network.layers\[1\].size: expected an integer"):
        config_from_dict(
            xor_config(network={"layers": [{"name": "input", "size": 2}, {"name": "o", "size": 1.5}]})
        )
    with pytest.raises(ConfigError, match=r"network.weight_init: expected a list of 2 numbers"):
        config_from_dict(xor_config(network={**with_layers(2, 2, 1), "weight_init": [1]}))


def test_bad_data_rows_are_reported_by_line(tmp_path):
    from exmachina.data.datasets import DatasetError, load_semeion

    good = " ".join(["1.0000"] * 256 + ["1"] + ["0"] * 9)
    cases = {
        "truncated": (good + "\n" + " ".join(good.split()[:200]), ":2: expected 266 values, found 200"),
        "bad number": (good.replace("1.0000", "x", 1), ":1: 'x' is not a number"),
        "not one-hot": (
            " ".join(["0"] * 256 + ["1", "1"] + ["0"] * 8),
            ":1: the last 10 values are not one-hot",
        ),
    }
    for name, (text, expected) in cases.items():
        path = Path(tmp_path / f"{name.replace(' ', '_')}.data")
        path.write_text(text + "\n")
        with pytest.raises(DatasetError, match=expected):
            load_semeion(path)


def test_a_key_that_must_be_positive_rejects_nan():
    # YAML's .nan passes every comparison but `> 0`: a NaN stall timeout would never stall
    for section, key in (("training", "stall_timeout"), ("runtime", "stats_interval")):
        config = xor_config()
        config[section] = {**config[section], key: float("nan")}
        with pytest.raises(ConfigError, match=rf"{section}\.{key}: must be a finite number"):
            config_from_dict(config)
