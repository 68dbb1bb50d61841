"""`exmachina report`: the viewer's pictures as PNG files in the run directory (matplotlib, Agg).

    report-weights-<layer>.png   each neuron's incoming weights: 16x16 pictures for 256 inputs, signed
                                 bars with their numbers when the inputs are values (XOR's 2)
    report-hidden-output.png     the last hidden layer's weights to the output layer, as a heat map
    report-predictions.png       the latest training predictions: the input (a picture, or its numbers
                                 as `0, 1 -> 0.97 (target 1)`), predicted / true label
    report-curves.png            loss and accuracy per epoch (train, last 200, held out)

It reads the run directory exactly as `exmachina view` does (`viewer.state`), so it works on a
finished run and on one still training (the newest of snapshot.npz and model.npz), and it takes its
colours from the page's (`viewer.CURVE_COLOURS`, `viewer.WEIGHT_COLOURS`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exmachina.rundir.directory import RunDir, resolve
from exmachina.tools.viewer import CURVE_COLOURS, MAX_VALUES, WEIGHT_COLOURS, number, state

MAX_NEURONS = 64  # drawn per layer; a bigger layer shows its first 64
MAX_PREDICTIONS = 20
RIGHT, WRONG = "#1f7a37", "#b3321f"


def _figure(**kwargs: Any):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(**kwargs)


def _save(fig: Any, path: Path) -> Path:
    """Write aside, then rename: the viewer or a person never opens half a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path


def _array(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _grid(count: int, columns: int) -> tuple[int, int]:
    cols = max(1, min(count, columns))
    return math.ceil(count / cols), cols


def weights_figure(picture: dict) -> Any:
    """One panel per neuron (the first MAX_NEURONS): its incoming weights as a picture when the layer
    below is one (`shape`), else as signed bars; one scale for the whole layer."""
    neurons = picture["neurons"][:MAX_NEURONS]
    rows, cols = _grid(len(neurons), 8)
    shape = picture["shape"]
    width = 1.6 * cols + 1.2 if shape else max(7.0, 1.6 * cols + 1.2)  # bars: room for the title
    fig = _figure(figsize=(width, (1.8 if shape else 1.6) * rows + 0.9), layout="constrained")
    every = np.concatenate([_array(n["weights"]) for n in neurons]) if neurons else np.zeros(1)
    scale = float(np.nanmax(np.abs(every))) if np.isfinite(every).any() else 1.0
    axes = fig.subplots(rows, cols, squeeze=False, sharey=not shape)
    image = None
    for ax, neuron in zip(axes.flat, neurons):
        w = _array(neuron["weights"])
        if shape:
            image = _picture(ax, w.reshape(shape), scale)
        else:
            _bars(ax, w, scale, picture["from"])
        ax.set_title(f"{neuron['id']}  b={_number(neuron['bias'])}", fontsize=8)
    for ax in axes.flat[len(neurons) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    shown = (
        f" (first {MAX_NEURONS} of {len(picture['neurons'])})"
        if len(picture["neurons"]) > MAX_NEURONS
        else ""
    )
    drawn = f"{shape[0]}x{shape[1]}" if shape else "as bars (red positive, blue negative)"
    fig.suptitle(
        f"layer {picture['layer']}: incoming weights from {picture['from']}, drawn {drawn}{shown}",
        fontsize=10,
    )
    return fig


def _picture(ax: Any, w: np.ndarray, scale: float) -> Any:
    image = ax.imshow(w, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def _bars(ax: Any, w: np.ndarray, scale: float, below: str) -> None:
    """Signed bars in the page's colours, numbered when there are few; a diverged weight is a gap."""
    colours = [WEIGHT_COLOURS["negative" if v < 0 else "positive"] for v in np.nan_to_num(w)]
    bars = ax.bar(range(len(w)), np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0), color=colours)
    ax.axhline(0, color="#888", linewidth=0.8)
    ax.set_ylim(-1.3 * scale, 1.3 * scale)
    ax.tick_params(labelsize=6)
    if len(w) <= 8:
        ax.set_xticks(range(len(w)), [f"{below}.{i}" for i in range(len(w))], fontsize=6)
    if len(w) <= MAX_VALUES // 2:
        ax.bar_label(bars, labels=[number(v) for v in w], fontsize=6, padding=1)


def matrix_figure(matrix: dict) -> Any:
    w = np.array([_array(row) for row in matrix["weights"]])
    rows, cols = w.shape
    fig = _figure(figsize=(max(4.0, 0.5 * cols + 2.2), max(3.0, 0.42 * rows + 1.4)), layout="constrained")
    ax = fig.subplots()
    scale = float(np.nanmax(np.abs(w))) if np.isfinite(w).any() else 1.0
    image = ax.imshow(w, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    ax.set_xticks(range(cols), [str(k) for k in range(cols)], fontsize=8)
    ax.set_yticks(range(rows), [f"{matrix['from']}.{j}" for j in range(rows)], fontsize=8)
    ax.set_xlabel(matrix["to"])
    if rows * cols <= 400:
        for j in range(rows):
            for k in range(cols):
                dark = abs(w[j, k]) > 0.6 * scale
                ax.text(
                    k, j, f"{w[j, k]:.1f}", ha="center", va="center", fontsize=6, color="w" if dark else "k"
                )
    fig.colorbar(image, ax=ax, label="weight")
    ax.set_title(f"weights {matrix['from']} -> {matrix['to']}", fontsize=10)
    return fig


def predictions_figure(predictions: list[dict], samples: Any) -> Any:
    """The latest predictions (newest first): pictures of the inputs when they are one, else a line of
    numbers each."""
    shown = predictions[-MAX_PREDICTIONS:][::-1]  # newest first
    if shown and not shown[0]["shape"]:
        return _values_figure(shown, samples)
    rows, cols = _grid(len(shown), 10)
    fig = _figure(figsize=(1.3 * cols + 0.4, 1.55 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, p in zip(axes.flat, shown):
        right = p["predicted"] == p["target"]
        ax.imshow(_array(p["input"]).reshape(p["shape"]), cmap="gray_r", interpolation="nearest")
        ax.set_title(f"{p['predicted']} / {p['target']}", fontsize=9, color=RIGHT if right else WRONG)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(RIGHT if right else WRONG)
            spine.set_linewidth(2.5)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    fig.suptitle(f"latest predictions after {samples} samples: predicted / true (newest first)", fontsize=10)
    return fig


def _values_figure(shown: list[dict], samples: Any) -> Any:
    """Inputs that are values, one line each: `0, 1 -> 0.97 (target 1)`, green right, red wrong."""
    fig = _figure(figsize=(6.4, 0.26 * len(shown) + 0.9), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(len(shown), -0.5)
    for k, p in enumerate(shown):
        right = p["predicted"] == p["target"]
        colour = RIGHT if right else WRONG
        ax.text(0.0, k, f"row {p['row']}", fontsize=9, family="monospace", va="center", color="#555")
        ax.text(0.14, k, p["text"], fontsize=9, family="monospace", va="center", color=colour)
        ax.text(1.0, k, "right" if right else "wrong", fontsize=9, va="center", ha="right", color=colour)
    fig.suptitle(f"latest predictions after {samples} samples: input -> output (newest first)", fontsize=10)
    return fig


def curves_figure(metrics: list[dict]) -> Any:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(10, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)

    def plot(ax: Any, key: str, label: str) -> None:
        points = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None and "epoch" in m]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label, color=CURVE_COLOURS[label])

    plot(loss_ax, "loss", "train")
    plot(loss_ax, "holdout_loss", "held out")
    plot(acc_ax, "accuracy", "train")
    plot(acc_ax, "recent_accuracy", "last 200")
    plot(acc_ax, "holdout_accuracy", "held out")
    acc_ax.set_ylim(0, 1.02)
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(run: RunDir) -> list[Path]:
    """Every picture the run's files allow; returns the paths written."""
    s = state(run)
    written = []
    for picture in s["pictures"]:
        written.append(_save(weights_figure(picture), run.path / f"report-weights-{picture['layer']}.png"))
    if s["matrix"] is not None:
        written.append(_save(matrix_figure(s["matrix"]), run.path / "report-hidden-output.png"))
    if s["predictions"]:
        figure = predictions_figure(s["predictions"], s["samples"])
        written.append(_save(figure, run.path / "report-predictions.png"))
    if s["metrics"]:
        written.append(_save(curves_figure(s["metrics"]), run.path / "report-curves.png"))
    return written


def main(run: str | None, out: Callable = print) -> int:
    """`exmachina report [RUN]`: RUN is a path, a name under runs/, or (None) runs/latest."""
    rundir = resolve(run)
    if not rundir.path.is_dir():
        print(f"exmachina: no run directory at {rundir.path}", file=sys.stderr)
        return 2
    written = write_report(rundir)
    if not written:
        print(f"exmachina: {rundir.path}: no weights, predictions or metrics yet", file=sys.stderr)
        return 2
    for path in written:
        out(str(path.resolve()))
    return 0
