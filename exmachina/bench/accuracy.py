"""Time to accuracy: the samples and seconds a shipped digits config takes until its held-out accuracy
first reaches each threshold, on the process network and on the dense reference.

Both score the held-out rows after every epoch, so each figure is that of the first epoch end at or
above the threshold: samples trained by then and seconds since training began (the network's
`elapsed` in metrics.jsonl, its epoch-end scoring included; the reference's own clock). The
process network stops as soon as every threshold is reached, or when its time is up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from exmachina.bench.runs import RowFailed, _supervised
from exmachina.config import config_from_dict
from exmachina.data import datasets
from exmachina.model import parameters
from exmachina.model.reference import Reference

THRESHOLDS = (0.80, 0.85, 0.88)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the shipped configs, in a checkout
POLL_S = 0.2


def shipped(name: str, semeion: Path) -> dict:
    """A shipped config as a dict, reading `semeion` for its digits, logging warnings only."""
    raw = yaml.safe_load((CONFIGS / name).read_text())
    if raw["data"]["source"] == "semeion":
        raw["data"] = {**raw["data"], "path": str(Path(semeion).resolve())}
    raw["runtime"] = {**raw.get("runtime", {}), "log_level": "warning"}
    return raw


def first_reached(scores: list[dict], thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, Any]:
    """Per threshold, the first epoch end at or above it: {"epoch", "samples", "seconds"}, or None."""
    reached: dict[str, Any] = {}
    for threshold in thresholds:
        hit = next((s for s in scores if s["holdout_accuracy"] >= threshold), None)
        reached[f"{threshold:.2f}"] = (
            None if hit is None else {k: hit[k] for k in ("epoch", "samples", "seconds")}
        )
    return reached


def reference_to_accuracy(config: dict, thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """The dense reference on the config's own split, optimizer and schedule, epoch by epoch, until
    every threshold is reached or its epochs are done."""
    c = config_from_dict(config)
    train, holdout = datasets.split(datasets.load(c), c.data.holdout, c.seed)
    if len(holdout) == 0:
        raise RowFailed("the config holds no rows out")
    t = c.training
    model = Reference(parameters.initial(c), t.loss, t.learning_rate, t.optimizer, t.schedule)
    scores: list[dict] = []
    started = time.perf_counter()
    for epoch in range(t.epochs):
        model.train_epoch(train, epoch, c.seed, t.shuffle, t.batch_size)
        accuracy = model.evaluate(holdout)[1]
        seconds = time.perf_counter() - started
        scores.append(_score(epoch + 1, accuracy, (epoch + 1) * len(train), seconds))
        if accuracy >= max(thresholds):
            break
    return _result(scores, thresholds)


def network_to_accuracy(
    config: dict, workdir: Path, sockets: Path, timeout: float, thresholds: tuple[float, ...] = THRESHOLDS
) -> dict:
    """The process network on the config, its epoch records read as they come; stopped once every
    threshold is reached or `timeout` seconds have passed (thresholds not reached by then: None)."""
    with _supervised(config, workdir, sockets) as (tree, runs):
        metrics = runs / "latest" / "metrics.jsonl"
        deadline = tree.started + timeout
        scores: list[dict] = []
        while tree.running() and time.monotonic() < deadline:
            scores = _epoch_scores(metrics)
            if scores and max(s["holdout_accuracy"] for s in scores) >= max(thresholds):
                break
            time.sleep(POLL_S)
        tree.stop()
        scores = _epoch_scores(metrics)
    result = _result(scores, thresholds)
    result["timed_out"] = time.monotonic() >= deadline
    return result


def _epoch_scores(metrics: Path) -> list[dict]:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return []
    records = [json.loads(line) for line in lines if line.strip()]
    return [
        _score(r["epoch"], r["holdout_accuracy"], r["samples"], r["elapsed"])
        for r in records
        if r.get("event") == "epoch" and r.get("holdout_accuracy") is not None
    ]


def _score(epoch: int, accuracy: float, samples: int, seconds: float) -> dict:
    return {"epoch": epoch, "holdout_accuracy": accuracy, "samples": samples, "seconds": seconds}


def _result(scores: list[dict], thresholds: tuple[float, ...]) -> dict:
    return {
        "status": "ok",
        "epochs": len(scores),
        "best_holdout_accuracy": max((s["holdout_accuracy"] for s in scores), default=None),
        "reached": first_reached(scores, thresholds),
    }
