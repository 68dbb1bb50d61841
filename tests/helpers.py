"""What the tests share: configs, the real entry point run as a user would, waiting without fixed
sleeps, and the dense reference to compare a run against. conftest.py holds only fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from exmachina.config import Config, load_config
from exmachina.data import datasets
from exmachina.model import parameters
from exmachina.model.parameters import Parameters
from exmachina.model.reference import Reference

REPO = Path(__file__).resolve().parent.parent
TITLE = "exmachina:"


def exmachina_processes() -> dict[int, str]:
    """Live processes titled `exmachina: ...` (neurons, coordinators, supervisors)."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = " ".join(a for a in proc.info["cmdline"] or [] if a).strip()
            if cmdline.startswith(TITLE) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found[proc.info["pid"]] = cmdline
        except psutil.Error:
            continue
    return found


def xor_config(**sections: Any) -> dict:
    """A 2-3-1 XOR config as a dict; each keyword replaces or (for a mapping) updates a section."""
    config = {
        "name": "xor",
        "seed": 3,
        "network": {
            "layers": [
                {"name": "input", "size": 2},
                {"name": "hidden1", "size": 3, "activation": "tanh"},
                {"name": "output", "size": 1, "activation": "logistic"},
            ]
        },
        "training": {"learning_rate": 0.5, "epochs": 100},
        "data": {"source": "xor"},
        "runtime": {"log_level": "info"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(directory: Path, config: dict, name: str = "config.yaml") -> Path:
    """The config as a YAML file in `directory`, with its runs kept there too."""
    config = {**config, "runtime": {**config.get("runtime", {}), "runs_dir": str(directory / "runs")}}
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def learn_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "exmachina.supervisor", "--config", str(config_path)]


def run_learn(config_path: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Train through the real entry point, as a user would."""
    return subprocess.run(
        learn_command(config_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config_path.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def start_learn(config_path: Path) -> subprocess.Popen:
    """Start training in its own session, as a terminal would (so killpg reaches the whole group)."""
    return subprocess.Popen(
        learn_command(config_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config_path.parent,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """The predicate's first truthy value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


def run_dir(tmp_path: Path) -> Path:
    """The run directory of the XOR run started in `tmp_path`, once it exists."""
    return wait_for(lambda: next((tmp_path / "runs").glob("xor-*"), None))


def training_underway(tmp_path: Path) -> bool:
    return wait_for(lambda: (run_dir(tmp_path) / "metrics.jsonl").exists(), timeout=30)


def reference_after(config_path: Path, epochs: int | None = None) -> tuple[Reference, Config]:
    """The dense reference trained on the config's data for its epochs (or `epochs`)."""
    config = load_config(config_path)
    data = datasets.load(config)
    train, _ = datasets.split(data, config.data.holdout, config.seed)
    t = config.training
    reference = Reference(parameters.initial(config), t.loss, t.learning_rate, t.optimizer, t.schedule)
    for epoch in range(epochs or t.epochs):
        reference.train_epoch(train, epoch, config.seed, t.shuffle, batch_size=t.batch_size)
    return reference, config


def assert_same_parameters(got: Parameters, want: Parameters, atol: float = 1e-9) -> None:
    assert got.sizes == want.sizes
    for layer, (a, b) in enumerate(zip(got.axons, want.axons)):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"axons of layer {layer}")
    for layer, (a, b) in enumerate(zip(got.biases, want.biases)):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"biases of layer {layer}")
