"""Faults at the edges: insecure links, a full disk, damaged checkpoints, non-finite numbers, killed
helpers, stops. Each test injects one fault through the real entry point and checks what is kept
and what the user is told."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exmachina.config import ConfigError, config_from_dict
from exmachina.model.parameters import Parameters
from tests.helpers import run_learn, write_config, xor_config

CLEAR_TCP = {"transport": "tcp", "curve": "off"}


@pytest.mark.unit
def test_curve_off_on_a_host_others_reach_is_refused_unless_allowed():
    with pytest.raises(ConfigError, match=r"runtime\.curve: off over tcp on 10\.1\.2\.3: .*allow_clear_tcp"):
        config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "10.1.2.3"}))
    config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "10.1.2.3", "allow_clear_tcp": True}))
    config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "127.0.0.1"}))


def test_curve_off_over_tcp_is_warned_about_at_start(tmp_path):
    path = write_config(tmp_path, xor_config(runtime=CLEAR_TCP, training={"epochs": 2}))
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    assert "WARNING: curve: off over tcp" in result.stderr


# -- non-finite numbers ------------------------------------------------------------------------------

LINEAR = {
    "layers": [
        {"name": "input", "size": 2},
        {"name": "hidden1", "size": 3, "activation": "identity"},
        {"name": "output", "size": 1, "activation": "identity"},
    ]
}


def test_a_loss_that_turns_infinite_stops_the_run_and_keeps_the_last_finite_model(tmp_path):
    # identity units and a huge step: the weights grow without bound within a few updates
    path = write_config(
        tmp_path,
        xor_config(
            network=LINEAR, training={"learning_rate": 1e3, "epochs": 200}, runtime={"checkpoint_every": 1}
        ),
    )
    result = run_learn(path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged" in lines[0] and "nan_policy" in lines[0], result.stderr
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    model = Parameters.load(run / "model.npz")
    assert all(np.isfinite(a).all() for a in [*model.axons, *model.biases])
    assert f"update {summary['model_from_checkpoints']}" in lines[0]


def test_nan_policy_ignore_trains_on(tmp_path):
    config = xor_config(network=LINEAR, training={"learning_rate": 1e3, "epochs": 30, "nan_policy": "ignore"})
    result = run_learn(write_config(tmp_path, config))
    assert result.returncode == 0, result.stderr
    assert json.loads((only_run(tmp_path) / "summary.json").read_text())["status"] == "completed"


def only_run(tmp_path: Path) -> Path:
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("xor-")]
    return run
