"""The bench on tiny sizes: its real functions run, its figures hang together, nothing is left behind.

Timings are never asserted: the machine is shared. What is checked is structure and arithmetic
(positive figures, ratios that equal their parts, a parseable results.json) and that a failing or
timed-out row is reported as failed without stopping the rest or leaking processes and sockets.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import yaml
from rich.console import Console

from exmachina.bench import accuracy, baselines, cli, profiles, render, runs, suite, tasks
from exmachina.bench import ipc as bench_ipc
from exmachina.network import transport, wire

TINY = replace(
    profiles.QUICK,
    name="tiny",
    transport_messages=2_000,
    round_trips=100,
    xor_samples=8,
    semeion_samples=0,  # 275 processes per 256-8-10 row: too slow for a unit test
    startup_sizes=(),
    core_samples_xor=8,
    reference_min_s=0.02,
    bare_samples=10,
)


def test_the_cores_rows_double_up_to_every_usable_core():
    assert suite.core_counts(1) == [1]
    assert suite.core_counts(2) == [1, 2]
    assert suite.core_counts(6) == [1, 2, 4, 6]
    assert suite.core_counts(16) == [1, 2, 4, 8, 16]


def test_messages_per_batch_counts_every_link_both_ways():
    # coordinator->2 inputs, 2x2, 2x1, output->coordinator = 9 links, forward and back
    assert tasks.messages_per_batch([2, 2, 1]) == 18
    assert tasks.messages_per_batch([256, 8, 10]) == 2 * (256 + 256 * 8 + 8 * 10 + 10)
    assert tasks.messages_per_batch([3, 4, 3, 2]) == 2 * (3 + 12 + 12 + 6 + 2)


@pytest.mark.timeout(60)
def test_transport_ceiling_and_round_trip(no_leftovers):
    ceiling = baselines.transport_ceiling(3_000, no_leftovers, timeout=30)
    assert ceiling["messages"] == 3_000 and ceiling["seconds"] > 0
    assert math.isclose(ceiling["messages_per_s"], 3_000 / ceiling["seconds"])
    assert ceiling["message_bytes"] == len(bench_ipc.synapse_message(0)) < 32
    assert wire.decode(bench_ipc.synapse_message(7)) == wire.Activity(wire.FORWARD, 7, 0, bytes(8))
    assert bench_ipc.HIGH_WATER_MARK == transport.HIGH_WATER_MARK
    assert (bench_ipc.FORWARD, bench_ipc.BACKWARD, bench_ipc.STOP) == (wire.FORWARD, wire.BACKWARD, wire.STOP)
    latency = baselines.ipc_latency(200, no_leftovers, timeout=30)
    assert latency["round_trips"] == 200
    assert 0 < latency["min_us"] <= latency["median_us"] <= latency["p99_us"]


@pytest.mark.timeout(90)
def test_bare_network_passes_every_sample_and_leaves_nothing(no_leftovers):
    # 3-4-2: nine bare neuron processes forked by one worker; the fixture proves they are all gone
    row = baselines.bare_network([3, 4, 2], 20, no_leftovers, timeout=60)
    assert row["sizes"] == [3, 4, 2] and row["samples"] == 20 and row["seconds"] > 0
    assert math.isclose(row["samples_per_s"], 20 / row["seconds"])
    assert math.isclose(row["messages_per_s"], row["samples_per_s"] * tasks.messages_per_batch([3, 4, 2]))
    assert list(no_leftovers.iterdir()) == []


@pytest.mark.timeout(90)
def test_xor_row_and_its_reference(tmp_path, no_leftovers):
    config = tasks.xor_config(8)
    row = runs.train_network("xor", config, tmp_path / "run", no_leftovers, timeout=60)
    assert row["status"] == "ok", row
    assert row["samples"] == 8 and row["updates"] == 8
    assert row["samples_per_s"] > 0 and row["in_epoch_samples_per_s"] > 0
    assert row["messages_per_sample"] == row["messages_per_batch"] == 18
    assert math.isclose(row["synapse_messages_per_s"], row["samples_per_s"] * 18)
    assert row["peak_pss_mb"] > 0
    if row["cpu_us_per_message"] is not None:  # a run this short seldom gets two readings
        assert math.isclose(row["cpu_us_per_message"], row["cpu_s"] / row["cpu_messages"] * 1e6)
    reference = tasks.reference_rate(config, row["samples"], 0.01)
    assert reference["samples"] >= 8 and reference["samples_per_s"] > 0 and reference["batch_size"] == 1


def test_training_window_uses_readings_inside_training_only():
    readings = [(0, 1.0), (3, 2.0), (7, 4.0), (10, 9.0)]
    assert runs._training_window(readings, final=10) == (2.0, 4)
    assert runs._training_window([(0, 1.0), (10, 2.0)], final=10) is None


@pytest.mark.timeout(90)
def test_failed_and_timed_out_rows_are_reported_and_cleaned_up(tmp_path, no_leftovers):
    b = suite.Bench(TINY, tmp_path, no_leftovers, say=lambda _: None)
    failed = b.network("missing data", tasks.semeion_config(10, tmp_path / "missing.data"), timeout=30)
    assert failed["status"] == "failed" and "exit code 2" in failed["error"]
    slow = b.network("too slow", tasks.xor_config(400_000), timeout=4, reference=False)
    assert slow["status"] == "failed" and "timed out" in slow["error"]
    assert "socket_files_left" not in slow


@pytest.mark.timeout(90)
def test_startup_probe_100_neurons(tmp_path, no_leftovers):
    row = runs.startup_probe(100, tmp_path / "run", no_leftovers, timeout=60, settle_s=0.2)
    assert row["status"] == "ok" and row["wired"] == 100 and row["neurons_measured"] == 100
    assert row["ready_s"] > row["wiring_s"] > 0
    assert 0 < row["uss_mb_median"] <= row["uss_mb_max"]
    assert row["tree_pss_mb"] > 100 * row["uss_mb_median"] * 0.5
    assert row["peak_pss_mb"] > 0


@pytest.mark.timeout(120)
def test_run_bench_writes_consistent_results(tmp_path, no_leftovers):
    out = tmp_path / "bench" / "results.json"
    suite.run_bench(TINY, out, say=lambda _: None)
    results = json.loads(out.read_text())
    assert results["profile"]["name"] == "tiny"
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"] and machine["pyzmq"] and machine["libzmq"]
    assert "16-core" in " ".join(results["notes"])
    assert results["socket_files_left"] == []
    assert render.failures(results) == []

    ceiling = results["transport"]["ceiling"]["messages_per_s"]
    assert ceiling > 0 and results["transport"]["latency"]["median_us"] > 0
    (xor,) = results["training"]
    assert xor["status"] == "ok" and xor["reference"]["samples_per_s"] > 0
    assert math.isclose(
        xor["reference_over_network"], xor["reference"]["samples_per_s"] / xor["samples_per_s"]
    )
    assert math.isclose(xor["share_of_ceiling"], xor["synapse_messages_per_s"] / ceiling)
    (bare,) = results["transport"]["bare"]
    assert bare["status"] == "ok" and bare["sizes"] == [2, 2, 1] == xor["sizes"]
    assert xor["batch_size"] == 1
    assert math.isclose(xor["over_bare"], xor["samples_per_s"] / bare["samples_per_s"])

    (pair,) = results["cores"]
    assert pair["counts"] == suite.core_counts(machine["cpus_usable"])
    one = pair["cores_1"]
    assert one["cpus"] and len(one["cpus"]) == 1
    for n in pair["counts"][1:]:
        assert len(pair[f"cores_{n}"]["cpus"]) == n
        assert math.isclose(
            pair[f"speedup_{n}_over_1"], pair[f"cores_{n}"]["samples_per_s"] / one["samples_per_s"]
        )
    assert results["startup"] == [] and "pipelining" not in results

    text = io.StringIO()
    render.render(results, Console(file=text, width=170))
    assert "transport ceiling" in text.getvalue() and "xor 2-2-1 online" in text.getvalue()
    assert "bare 2-2-1" in text.getvalue()


@pytest.mark.timeout(120)
def test_log_levels_take_the_median_of_interleaved_runs(tmp_path, no_leftovers):
    b = suite.Bench(replace(TINY, log_samples=8), tmp_path, no_leftovers, say=lambda _: None)
    rows = b.logging(rounds=2)
    assert [row["name"] for row in rows] == ["xor log off", "xor log info", "xor log debug"]
    for row in rows:
        assert row["status"] == "ok", row
        assert len(row["runs_samples_per_s"]) == 2 and row["samples_per_s"] in row["runs_samples_per_s"]
    text = io.StringIO()
    render.render({**json.loads(json.dumps({"logging": rows})), **_minimal_results()}, Console(file=text))
    assert "log levels" in text.getvalue() and "debug" in text.getvalue()


def _minimal_results() -> dict:
    machine = {"cpu_count": 2, "cpu_model": "x", "python": "3", "pyzmq": "1", "libzmq": "1"}
    machine.update(load_average=[0, 0, 0], load_average_end=[0, 0, 0])
    failed = {"status": "failed", "error": "not run"}
    transport = {"ceiling": failed, "latency": failed}
    return {"profile": {"name": "t"}, "machine": machine, "wall_s": 0, "transport": transport}


def test_pipelining_reuses_what_training_measured(tmp_path):
    b = suite.Bench(replace(TINY, k_sweep=(1, 4)), tmp_path, tmp_path, say=lambda _: None)
    b.online_by_k = {1: {"name": "256-8-10 online", "status": "ok"}, 4: {"name": "in-flight", "status": "ok"}}
    sweep = b.pipelining(tmp_path / "unused.data")
    assert [(r["k"], r["reused"], r["name"]) for r in sweep] == [
        (1, True, "256-8-10 online"),
        (4, True, "in-flight"),
    ]


@pytest.mark.timeout(60)
def test_only_the_sections_asked_for_are_run_and_rendered(tmp_path, no_leftovers):
    out = tmp_path / "results.json"
    results = suite.run_bench(TINY, out, say=lambda _: None, only=("startup",))
    assert results["startup"] == [] and not {"transport", "training", "cores"} & set(results)
    text = io.StringIO()
    render.render(json.loads(out.read_text()), Console(file=text, width=170))
    assert "start-up" in text.getvalue() and "transport ceiling" not in text.getvalue()


@pytest.mark.unit
def test_the_sections_flag_names_known_sections_only():
    assert cli._sections("pipelining, training") == ("pipelining", "training")
    with pytest.raises(argparse.ArgumentTypeError, match="no section pipelines"):
        cli._sections("pipelines")


@pytest.mark.unit
def test_the_accuracy_line_sets_the_pipelined_network_against_online():
    row = {"name": "256-8-10 K=32, 3 epochs", "status": "ok", "holdout_accuracy": 0.5, "samples_per_s": 70.0}
    accuracy = {"epochs": 3, "k": 32, "online_reference": 0.675, "pipelined": row}
    line = render._accuracy_line(accuracy)
    assert "after 3 epochs" in line and "67.5%" in line and "K=32" in line
    assert "50.0% (-17.5 points, 70.00 samples/s)" in line
    failed = {**accuracy, "pipelined": {"name": row["name"], "status": "failed", "error": "timed out"}}
    assert "failed" in render._accuracy_line(failed)
    assert render.failures({"pipelined_accuracy": failed}) == ["256-8-10 K=32, 3 epochs: timed out"]


@pytest.mark.unit
def test_the_held_out_semeion_config_uses_every_row_and_the_reference_scores_it(tmp_path):
    config = tasks.semeion_config(None, profiles.SEMEION, 32, 1, 1, holdout=0.2)
    assert config["data"]["limit"] is None and config["data"]["holdout"] == 0.2
    accuracy = tasks.reference_holdout(config)
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.timeout(120)
def test_time_to_accuracy_rows_for_each_config_network_and_reference(tmp_path, no_leftovers, monkeypatch):
    """A 3-4-2 network on 60 rows whose label is whether x0 > x1, held out by a fifth, in place of
    the shipped digits configs (whose 290 processes are too slow for a test)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, size=(60, 3))
    y = np.eye(2)[(x[:, 0] > x[:, 1]).astype(int)]
    np.savetxt(tmp_path / "rows.csv", np.hstack([x, y]), delimiter=",")
    config = {
        "name": "tiny_accuracy",
        "seed": 2,
        "network": {
            "layers": [
                {"name": "input", "size": 3},
                {"name": "hidden", "size": 4, "activation": "tanh"},
                {"name": "output", "size": 2, "activation": "identity"},
            ]
        },
        "training": {
            "learning_rate": 0.05,
            "epochs": 30,
            "loss": "softmax_cross_entropy",
            "batch_size": 4,
            "optimizer": "adam",
        },
        "data": {"source": "csv", "path": str(tmp_path / "rows.csv"), "targets": 2, "holdout": 0.2},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(accuracy, "CONFIGS", tmp_path)
    profile = replace(TINY, accuracy_configs=("tiny.yaml",), accuracy_timeout_s=60)
    rows = suite.Bench(profile, tmp_path / "work", no_leftovers, say=lambda _: None).accuracy(tmp_path)
    assert [(r["name"], r["engine"], r["config"]) for r in rows] == [
        ("tiny to accuracy, network", "network", "tiny.yaml"),
        ("tiny to accuracy, reference", "reference", "tiny.yaml"),
    ]
    for row in rows:
        assert row["status"] == "ok", row
        assert list(row["reached"]) == ["0.80", "0.85", "0.88"]
        assert 1 <= row["epochs"] <= 30 and 0 <= row["best_holdout_accuracy"] <= 1
        hits = [hit for hit in row["reached"].values() if hit is not None]
        assert [h["epoch"] for h in hits] == sorted(h["epoch"] for h in hits), "a higher bar comes no sooner"
        for hit in hits:
            assert hit["samples"] == hit["epoch"] * 48 and hit["seconds"] > 0
    epochs = [{t: hit and (hit["epoch"], hit["samples"]) for t, hit in r["reached"].items()} for r in rows]
    assert epochs[0] == epochs[1], "the same algorithm, exactly: the same epochs reach each bar"
    text = io.StringIO()
    render.render({"accuracy": rows, **_minimal_results()}, Console(file=text, width=170))
    assert "time to held-out accuracy" in text.getvalue() and "tiny to accuracy, reference" in text.getvalue()
    assert render.failures({"accuracy": rows}) == []
