"""Bad inputs, table-driven: each is refused with exit 2 and one line naming the file and the key,
before a run directory, a socket or a process exists. The table is checked at the level of `prepare`
(fast), and a set of cases that fail late in the launcher through the real entry point."""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from exmachina.config import ConfigError
from exmachina.data.datasets import DatasetError
from exmachina.launch.learn import prepare
from tests.helpers import learn_command, xor_config

NAN, INF = float("nan"), float("inf")


def csv(text: bytes | str) -> Callable[[Path], dict]:
    """A CSV case: the file written next to the config, and the data section that reads it."""

    def make(folder: Path) -> dict:
        path = folder / "rows.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return {"data": {"source": "csv", "path": "rows.csv", "targets": 1}}

    return make


def layers(*sizes: int, hidden: str = "hidden") -> dict:
    names = ["input", *(f"{hidden}{i}" for i in range(len(sizes) - 2)), "output"]
    return {"network": {"layers": [{"name": n, "size": s} for n, s in zip(names, sizes)]}}


def runs_dir_file(folder: Path) -> dict:
    (folder / "afile").write_text("not a directory\n")
    return {"runtime": {"runs_dir": str(folder / "afile" / "runs")}}


# case -> (the config's sections, or a maker of them given the folder; the raw file instead; the key)
CASES: dict[str, tuple[dict | Callable[[Path], dict] | None, bytes | None, str]] = {
    "binary config": (None, bytes(range(256)) * 4, "not a text file"),
    "duplicate key": (None, b"name: xor\nname: xor\nseed: 1\n", "line 2: duplicate key 'name'"),
    "binary csv": (csv(bytes(range(256)) * 4), None, "rows.csv: byte 128: not a text file"),
    "nan in csv": (csv("0,0,0\n0,nan,1\n1,0,1\n1,1,0\n"), None, "rows.csv:2: 'nan' is not a finite number"),
    "inf in csv": (csv("0,0,0\n0,1,-inf\n1,0,1\n1,1,0\n"), None, "rows.csv:2: '-inf' is not a finite"),
    "weight_init nan": (
        {"network": {**xor_config()["network"], "weight_init": [NAN, NAN]}},
        None,
        "weight_init[0]",
    ),
    "weight_init too wide": (
        {"network": {**xor_config()["network"], "weight_init": [-1e308, 1e308]}},
        None,
        "network.weight_init: range too wide",
    ),
    "seed -1": ({"seed": -1}, None, "seed: must be >= 0"),
    "learning_rate inf": (
        {"training": {"learning_rate": INF}},
        None,
        "training.learning_rate: must be a finite",
    ),
    "stall_timeout nan": (
        {"training": {"stall_timeout": NAN}},
        None,
        "training.stall_timeout: must be a finite",
    ),
    "target_loss nan": ({"training": {"target_loss": NAN}}, None, "training.target_loss: must be a finite"),
    "stats_interval nan": (
        {"runtime": {"stats_interval": NAN}},
        None,
        "runtime.stats_interval: must be a finite",
    ),
    "restart_period nan": (
        {"runtime": {"restart_period": NAN}},
        None,
        "runtime.restart_period: must be a finite",
    ),
    "log_max_bytes -1": ({"runtime": {"log_max_bytes": -1}}, None, "runtime.log_max_bytes: must be at least"),
    "300-character name": ({"name": "a" * 300}, None, "name: at most 64 characters"),
    "120-character hidden layer": (
        layers(2, 3, 1, hidden="h" * 119),
        None,
        "network.layers[1].name: at most 64",
    ),
    "runs_dir is a file": (runs_dir_file, None, "runtime.runs_dir: "),
    "host not here": (
        {"runtime": {"transport": "tcp", "host": "8.8.8.8"}},
        None,
        "runtime.host: cannot bind",
    ),
    "holdout leaves nothing": ({"data": {"source": "xor", "holdout": 0.9}}, None, "data.holdout: "),
    "10^7 hidden neurons": (layers(2, 10**7, 1), None, "network.layers[1].size: "),
    "10^5 hidden neurons (memory)": (layers(2, 10**5, 1), None, "network.layers[1].size: "),
}


def write_case(folder: Path, case: str) -> Path:
    sections, raw, _ = CASES[case]
    path = folder / "config.yaml"
    if raw is not None:
        path.write_bytes(raw)
        return path
    config = xor_config(
        runtime={"runs_dir": str(folder / "runs")}, training={"learning_rate": 0.5, "epochs": 2}
    )
    for key, value in (sections(folder) if callable(sections) else sections).items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.unit
@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_naming_the_file_and_key(case, tmp_path):
    path = write_case(tmp_path, case)
    with pytest.raises((ConfigError, DatasetError)) as caught:
        prepare(path)
    message = str(caught.value)
    assert "\n" not in message
    assert CASES[case][2] in message
    assert str(tmp_path) in message  # the config file, or the data file it names
    assert {p.name for p in tmp_path.iterdir()} <= {"afile", "config.yaml", "rows.csv"}


def refused(path: Path, limits: dict[int, tuple[int, int]] | None = None) -> str:
    """Run the real entry point, check it refused with exit 2 and a single line; that line."""

    def lower_limits() -> None:
        for which, value in (limits or {}).items():
            resource.setrlimit(which, value)

    result = subprocess.run(
        learn_command(path),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
        preexec_fn=lower_limits if limits else None,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("exmachina: "), result.stderr
    assert not (path.parent / "runs").exists()
    return lines[0]


THROUGH_THE_CLI = ["binary config", "binary csv", "seed -1", "runs_dir is a file", "host not here"]


@pytest.mark.parametrize("case", THROUGH_THE_CLI)
def test_the_entry_point_refuses_a_bad_input_and_creates_nothing(case, tmp_path):
    line = refused(write_case(tmp_path, case))
    assert CASES[case][2] in line


def test_descriptors_and_processes_the_machine_cannot_give_are_refused_before_starting(tmp_path):
    path = write_case(tmp_path, "seed -1")
    config = yaml.safe_load(path.read_text())
    config.update(seed=1, **layers(2, 100, 1))
    path.write_text(yaml.safe_dump(config))
    line = refused(path, {resource.RLIMIT_NOFILE: (128, 128)})
    assert "network.layers[1].size: " in line and "file descriptors" in line
    line = refused(path, {resource.RLIMIT_NPROC: (50, resource.getrlimit(resource.RLIMIT_NPROC)[1])})
    assert "network.layers[1].size: " in line and "processes" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_a_read_only_runs_dir_is_refused_in_one_line(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], check=True)
    try:
        path = write_case(tmp_path, "seed -1")
        config = yaml.safe_load(path.read_text())
        config.update(seed=1, runtime={"runs_dir": str(mount / "runs")})
        path.write_text(yaml.safe_dump(config))
        line = refused(path)
        assert "runtime.runs_dir: cannot write in" in line
        assert not list(mount.iterdir())
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_socket_path_too_long_for_a_hidden_layer_is_refused_up_front(tmp_path, no_leftovers):
    # a hidden layer's socket name is longer than the input layer's: every layer's is checked
    deep = Path(no_leftovers) / ("d" * (75 - len(str(no_leftovers)) - 1))  # input fits, hidden not
    deep.mkdir()
    path = write_case(tmp_path, "seed -1")
    config = yaml.safe_load(path.read_text())
    config.update(seed=1, **layers(2, 3, 1, hidden="h" * 30))
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "EXMACHINA_SOCKET_DIR": str(deep)}
    result = subprocess.run(learn_command(path), capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "ipc socket path" in result.stderr
    assert not (tmp_path / "runs").exists()
