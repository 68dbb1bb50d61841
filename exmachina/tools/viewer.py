"""`exmachina view`: watch a run learn in the browser, live or after the fact.

One self-contained page (inline JS and CSS, drawing on <canvas>; nothing from the network) polls
`/api/state` once a second. The state is read from the run directory as the run writes it:

    snapshot.npz      every weight and bias as the neurons themselves reported them (live)
    model.npz         the same at the end of the run (whichever of the two is newer is shown)
    predictions.json  the latest training predictions, with their inputs
    metrics.jsonl     one line per epoch: loss and accuracy curves
    summary.json      written when the run ends

Every file is read defensively: early in a run some are missing, and a line of metrics.jsonl may be
half written. The server is the standard library's ThreadingHTTPServer, bound to 127.0.0.1 unless
told otherwise. `report.py` draws the same pictures into PNG files.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from exmachina.model.parameters import Parameters
from exmachina.rundir.directory import RunDir, resolve
from exmachina.web import LocalHTTPServer, port_problem

DEFAULT_PORT = 8050
POLL_MS = 1000
METRIC_KEYS = (
    "epoch",
    "loss",
    "accuracy",
    "recent_accuracy",
    "holdout_loss",
    "holdout_accuracy",
    "samples",
    "samples_per_s",
    "elapsed",
)
MIN_PICTURE = 16  # fewer inputs than 4x4 are values, not a picture
MAX_VALUES = 16  # inputs printed per prediction, weights printed per neuron
# One definition for the page and for report.py: the curves' colours, by legend label, and the sign
# colours of weights (the ends of the blue-white-red scale of the pictures and the heat map).
CURVE_COLOURS = {"train": "#1f77b4", "last 200": "#9467bd", "held out": "#ff7f0e"}
WEIGHT_COLOURS = {"negative": "#2166ac", "positive": "#b2182b"}


# -- reading the run directory -------------------------------------------------------------------


def picture_shape(width: int) -> tuple[int, int] | None:
    """(side, side) when `width` inputs make a square picture of at least 4x4 (256 -> 16x16), else
    None: the inputs are values (XOR's 2, a table's few columns), drawn as bars and numbers."""
    side = math.isqrt(width)
    return (side, side) if width >= MIN_PICTURE and side * side == width else None


def number(value: Any, digits: int = 2) -> str:
    """A value as the page and the report print it: whole numbers bare (`0`, `1`), others with
    `digits` decimals, missing or non-finite ones as `-`."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.{digits}f}"


def prediction_text(inputs: list, output: list, predicted: Any, target: Any) -> str:
    """One prediction as a line of numbers: `0, 1 -> 0.97 (target 1)`; with several outputs, the
    predicted class stands for them (`-> class 2 (target 1)`); past MAX_VALUES inputs, the rest are
    counted."""
    shown = ", ".join(number(v) for v in inputs[:MAX_VALUES])
    if len(inputs) > MAX_VALUES:
        shown += f", ... ({len(inputs)} in all)"
    answer = number(output[0]) if len(output) == 1 else f"class {predicted}"
    return f"{shown} -> {answer} (target {target})"


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (never raises)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl; other events and broken lines are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being appended right now
        if isinstance(record, dict) and record.get("event", "epoch") == "epoch":
            records.append({k: _finite(record[k]) for k in METRIC_KEYS if k in record})
    return records


_cache: dict[Path, tuple[tuple[int, int], Parameters]] = {}
_cache_lock = threading.Lock()


def _load_cached(path: Path) -> Parameters | None:
    """Parameters.load, remembered for as long as the file is unchanged."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
    try:
        params = Parameters.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    with _cache_lock:
        _cache[path] = (key, params)
    return params


def current_parameters(run: RunDir) -> tuple[Parameters, Path] | None:
    """The newest weights of the run: snapshot.npz while it trains, model.npz once it is newer (or the
    only one). Falls back to the other file when the newer cannot be read."""
    found = []
    for rank, path in enumerate((run.model, run.snapshot)):  # on a tie the final model wins
        try:
            found.append((path.stat().st_mtime_ns, -rank, path))
        except OSError:
            continue
    for *_, path in sorted(found, reverse=True):
        params = _load_cached(path.resolve())
        if params is not None:
            return params, path
    return None


def drawn_layers(params: Parameters) -> list[int]:
    """Layers whose neurons are drawn by their incoming weights: every hidden layer (the output layer
    when there is none)."""
    last = len(params.sizes) - 1
    return list(range(1, last)) if last > 1 else [last]


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _floats(array: np.ndarray) -> list:
    """A float array as (nested) lists, non-finite values as None."""
    array = np.asarray(array, dtype=float)
    values = array.tolist()
    return values if np.isfinite(array).all() else _clean(values)


def _clean(value: Any) -> Any:
    """Any JSON value with its non-finite floats, at any depth, as None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return [_clean(v) for v in value] if isinstance(value, list) else _finite(value)


def _status(run: RunDir, summary: dict | None) -> str:
    if isinstance(summary, dict) and "status" in summary:
        return str(summary["status"])
    stats = read_json(run.stats)
    try:
        pid = int(stats["coordinator"]["pid"])
    except (TypeError, KeyError, ValueError):
        return "starting" if run.path.exists() else "missing"
    import psutil  # only here: the page needs it once a second at most

    return "training" if psutil.pid_exists(pid) else "ended without a summary"


def state(run: RunDir) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready values."""
    summary = read_json(run.summary)
    predictions = read_json(run.predictions)
    if not isinstance(predictions, dict):
        predictions = None
    current = current_parameters(run)
    out: dict[str, Any] = {
        "run": run.path.resolve().name,
        "path": str(run.path.resolve()),
        "status": _status(run, summary),
        "source": None,
        "samples": None,
        "epoch": None,
        "layers": [],
        "pictures": [],
        "matrix": None,
        "predictions": [],
        "metrics": read_metrics(run.metrics),
        "summary": _clean(summary) if isinstance(summary, dict) else None,
    }
    if predictions is not None:
        out["samples"], out["epoch"] = predictions.get("samples"), predictions.get("epoch")
        out["predictions"] = [_prediction(p) for p in predictions.get("recent", []) if isinstance(p, dict)]
    last = out["metrics"][-1] if out["metrics"] else None
    if last is not None and out["samples"] is not None and last.get("samples") == out["samples"]:
        out["epoch"] = last.get("epoch", out["epoch"])  # published at an epoch's end: that epoch
    if current is None:
        return out
    params, source = current
    out["source"] = source.name
    if source.name == run.model.name and isinstance(summary, dict) and "samples" in summary:
        out["samples"], out["epoch"] = summary["samples"], summary.get("epochs", out["epoch"])
    names, sizes = params.names, params.sizes
    out["layers"] = [
        {"name": n, "size": s, "activation": a} for n, s, a in zip(names, sizes, params.activations)
    ]
    for layer in drawn_layers(params):
        weights = params.axons[layer - 1]  # (size of the layer below, size of this layer)
        shape = picture_shape(weights.shape[0])
        out["pictures"].append(
            {
                "layer": names[layer],
                "from": names[layer - 1],
                "inputs": int(weights.shape[0]),
                "shape": list(shape) if shape else None,
                "drawn": "picture" if shape else "bars",
                "neurons": [
                    {
                        "id": f"{names[layer]}.{j}",
                        "bias": _finite(float(params.biases[layer][j])),
                        "weights": _floats(weights[:, j]),
                    }
                    for j in range(weights.shape[1])
                ],
            }
        )
    if len(sizes) > 2:
        out["matrix"] = {"from": names[-2], "to": names[-1], "weights": _floats(params.axons[-1])}
    return out


def _prediction(p: dict) -> dict:
    """A prediction of predictions.json for the page: a picture's `shape`, or (shape None) its values
    as a line of text."""
    inputs = [_finite(v) for v in p.get("input") or []]
    output = [_finite(v) for v in p.get("output") or []]
    shape = picture_shape(len(inputs))
    return {
        "row": p.get("row"),
        "input": inputs,
        "output": output,
        "predicted": p.get("predicted"),
        "target": p.get("target"),
        "shape": list(shape) if shape else None,
        "text": None if shape else prediction_text(inputs, output, p.get("predicted"), p.get("target")),
    }


# -- the server ----------------------------------------------------------------------------------


class ViewerServer(LocalHTTPServer):
    daemon_threads = True  # a browser holding a connection open never keeps the process alive
    allow_reuse_address = True

    def __init__(self, run: RunDir, address: tuple[str, int]) -> None:
        self.run = run
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries the page's polls
    timeout = 15  # an idle connection (a closed laptop lid) frees its thread

    def do_GET(self) -> None:  # the name http.server calls
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif path == "/api/state":
            body = json.dumps(state(self.server.run), allow_nan=False, separators=(",", ":"))
            self._send(200, "application/json", body.encode())
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        pass  # one line per poll would drown the terminal


def make_server(run: RunDir, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ViewerServer:
    """A bound, not yet serving, server (port 0: any free port; see `.url`)."""
    return ViewerServer(run, (host, port))


def serve(run: RunDir, host: str = "127.0.0.1", port: int = DEFAULT_PORT, out: Callable = print) -> int:
    """Serve until Ctrl-C (or SIGTERM); returns the exit code."""
    try:
        server = make_server(run, host, port)
    except OSError as exc:
        print(f"exmachina: cannot serve on {host}:{port}: {exc.strerror} (try --port 0)", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    out(f"exmachina: viewing {run.path} at {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        out("exmachina: viewer stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    return 0


def main(run: str | None, host: str, port: int, out: Callable = print) -> int:
    """`exmachina view [RUN]`: RUN is a path, a name under runs/, or (None) runs/latest."""
    rundir = resolve(run)
    if not rundir.path.is_dir():
        print(f"exmachina: no run directory at {rundir.path}", file=sys.stderr)
        return 2
    if problem := port_problem(port):
        print(f"exmachina: {problem}", file=sys.stderr)
        return 2
    return serve(rundir, host, port, out)


# -- the page ------------------------------------------------------------------------------------

PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>exmachina view</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
  header { padding: 10px 18px; background: #1f2a36; color: #eee; display: flex; gap: 22px;
           align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 17px; margin: 0; }
  header .v { font-variant-numeric: tabular-nums; }
  header .dim { color: #9aa; }
  #error { color: #ffb3a7; }
  main { padding: 8px 18px 24px; }
  section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px;
            margin: 12px 0; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  h2 small { font-weight: normal; color: #777; }
  .grid { display: flex; flex-wrap: wrap; gap: 10px; }
  figure { margin: 0; text-align: center; font-size: 12px; color: #444; }
  canvas.neuron, canvas.digit { image-rendering: pixelated; border: 1px solid #ccc; display: block; }
  .prediction { border: 3px solid #999; border-radius: 4px; padding: 3px; background: #fff; }
  .prediction.right { border-color: #2e9d4b; }
  .prediction.wrong { border-color: #d4442f; }
  .prediction .lab { font-weight: 600; }
  .prediction.right .lab { color: #1f7a37; }
  .prediction.wrong .lab { color: #b3321f; }
  .row { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-start; }
  .legend { font-size: 12px; color: #555; }
  .swatch { display: inline-block; width: 110px; height: 10px; vertical-align: middle;
            background: linear-gradient(to right, """
    + WEIGHT_COLOURS["negative"]
    + ", #fff, "
    + WEIGHT_COLOURS["positive"]
    + """); border: 1px solid #ccc; }
  .empty { color: #888; font-style: italic; }
  .values { font-variant-numeric: tabular-nums; max-width: 240px; }
  canvas.bars { border: 1px solid #ccc; display: block; margin: 0 auto; }
</style>
</head>
<body data-samples="" data-epoch="" data-status="loading" data-source="" data-error="">
<header>
  <h1>exmachina</h1>
  <span>run <b class="v" id="run">-</b></span>
  <span>status <b class="v" id="status">loading</b></span>
  <span>epoch <b class="v" id="epoch">-</b></span>
  <span>samples <b class="v" id="samples">-</b></span>
  <span class="dim">weights from <span id="source">-</span></span>
  <span class="dim">updated <span id="updated">-</span></span>
  <span id="error"></span>
</header>
<main>
  <div id="pictures"></div>
  <div class="row">
    <section id="matrix-section"><h2>Hidden &rarr; output weights <small id="matrix-title"></small></h2>
      <canvas id="matrix" width="10" height="10"></canvas>
      <div class="legend"><span id="matrix-min"></span> <span class="swatch"></span>
        <span id="matrix-max"></span></div>
    </section>
    <section><h2>Curves <small>per epoch, from metrics.jsonl</small></h2>
      <div class="row">
        <canvas id="loss-chart" width="340" height="220"></canvas>
        <canvas id="accuracy-chart" width="340" height="220"></canvas>
      </div>
    </section>
  </div>
  <section><h2>Latest predictions <small>predicted / true; green right, red wrong</small></h2>
    <div class="grid" id="predictions"><span class="empty">none yet</span></div>
  </section>
</main>
<script>
"use strict";
const POLL_MS = """
    + str(POLL_MS)
    + """;
const MAX_VALUES = """
    + str(MAX_VALUES)
    + """;
const CURVE_COLOURS = """
    + json.dumps(CURVE_COLOURS)
    + """;
const WEIGHT_COLOURS = """
    + json.dumps(WEIGHT_COLOURS)
    + """;
const $ = (id) => document.getElementById(id);

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function diverging(v, max) {
  // blue (negative) - white (zero) - red (positive); [r, g, b]
  if (v === null || !isFinite(v)) return [255, 0, 255];
  const t = Math.max(-1, Math.min(1, max > 0 ? v / max : 0));
  const lo = rgb(WEIGHT_COLOURS.negative), hi = rgb(WEIGHT_COLOURS.positive);
  const end = t < 0 ? lo : hi, a = Math.abs(t);
  return end.map((c) => Math.round(255 + (c - 255) * a));
}

function maxAbs(values) {
  let m = 0;
  for (const v of values) if (v !== null && isFinite(v)) m = Math.max(m, Math.abs(v));
  return m;
}

function paint(canvas, w, h, values, colour) {
  // one canvas pixel per value, scaled up by CSS (image-rendering: pixelated)
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = i < values.length ? colour(values[i]) : [238, 238, 238];
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function keyed(container, key, make) {
  // the child of `container` with data-key `key`, made once and then reused
  let el = container.querySelector(`:scope > [data-key="${key}"]`);
  if (!el) { el = make(); el.dataset.key = key; container.appendChild(el); }
  return el;
}

function prune(container, keys) {
  for (const el of [...container.children]) {
    if (el.dataset.key !== undefined && !keys.has(el.dataset.key)) el.remove();
  }
}

function fmt(v, digits = 3) {
  return v === null || v === undefined || !isFinite(v) ? "-" : Number(v).toFixed(digits);
}

function values(list) {
  // at most MAX_VALUES numbers, as the report prints them
  const shown = list.slice(0, MAX_VALUES).map((v) => fmt(v, 2)).join(", ");
  return list.length > MAX_VALUES ? `${shown}, ... (${list.length} in all)` : shown;
}

function drawBars(canvas, weights, max) {
  // one signed bar per weight about a zero line: red positive, blue negative, one scale per layer
  const n = weights.length, W = Math.min(240, Math.max(72, n * 18)), H = 64, mid = H / 2;
  canvas.width = W; canvas.height = H;
  canvas.style.width = W + "px"; canvas.style.height = H + "px";
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  const bw = W / Math.max(n, 1);
  let drawn = 0;
  weights.forEach((v, i) => {
    if (v === null || !isFinite(v)) {  // diverged: a magenta stripe, as in the pictures
      ctx.fillStyle = "#f0f";
      ctx.fillRect(i * bw + 1, 0, Math.max(1, bw - 2), H);
      return;
    }
    const h = (max > 0 ? Math.min(1, Math.abs(v) / max) : 0) * (mid - 3);
    ctx.fillStyle = v < 0 ? WEIGHT_COLOURS.negative : WEIGHT_COLOURS.positive;
    ctx.fillRect(i * bw + 1, v < 0 ? mid : mid - h, Math.max(1, bw - 2), h);
    drawn += 1;
  });
  ctx.fillStyle = "#888";
  ctx.fillRect(0, mid, W, 1);
  canvas.dataset.bars = drawn;
}

function drawPictures(pictures) {
  const root = $("pictures");
  const keys = new Set();
  for (const layer of pictures) {
    keys.add(layer.layer);
    const sec = keyed(root, layer.layer, () => {
      const s = document.createElement("section");
      s.innerHTML = "<h2></h2><div class='grid'></div>" +
        "<div class='legend'><span class='lo'></span> <span class='swatch'></span> <span class='hi'></span>" +
        " <span class='scale'></span></div>";
      return s;
    });
    const bars = !layer.shape;
    sec.querySelector("h2").innerHTML = `Layer <code>${layer.layer}</code>: each neuron's incoming ` +
      `weights from <code>${layer.from}</code> <small>${layer.neurons.length} neurons, ` +
      `${layer.inputs} inputs each, drawn ${bars ? "as bars" : layer.shape.join("&times;")}</small>`;
    const m = maxAbs(layer.neurons.flatMap((n) => n.weights));
    sec.querySelector(".lo").textContent = fmt(-m, 2);
    sec.querySelector(".hi").textContent = fmt(m, 2);
    sec.querySelector(".scale").textContent = bars
      ? `(bars: ${layer.from}.0 first, red positive, blue negative; one scale for the whole layer)`
      : "(one colour scale for the whole layer)";
    const grid = sec.querySelector(".grid");
    const ids = new Set();
    for (const n of layer.neurons) {
      ids.add(n.id);
      drawNeuron(grid, layer, n, m);
    }
    prune(grid, ids);
  }
  prune(root, keys);
}

function drawNeuron(grid, layer, n, m) {
  // a picture of the weights when the inputs are one (layer.shape), else bars and their numbers
  const fig = keyed(grid, n.id, () => {
    const f = document.createElement("figure");
    const c = document.createElement("canvas");
    c.dataset.neuron = n.id;
    const cap = document.createElement("figcaption");
    const vals = document.createElement("div");
    vals.className = "values";
    f.append(c, cap, vals);
    return f;
  });
  const canvas = fig.querySelector("canvas");
  canvas.dataset.drawn = layer.drawn;
  if (layer.shape) {
    const [h, w] = layer.shape;
    const scale = Math.max(3, Math.floor(112 / w));
    canvas.className = "neuron";
    canvas.style.width = w * scale + "px";
    canvas.style.height = h * scale + "px";
    paint(canvas, w, h, n.weights, (v) => diverging(v, m));
    fig.querySelector(".values").textContent = "";
  } else {
    canvas.className = "neuron bars";
    drawBars(canvas, n.weights, m);
    fig.querySelector(".values").textContent = values(n.weights);
  }
  canvas.title = `${n.id}: bias ${fmt(n.bias)}`;
  fig.querySelector("figcaption").textContent = `${n.id}  b=${fmt(n.bias, 2)}`;
}

function drawMatrix(matrix) {
  const sec = $("matrix-section");
  sec.style.display = matrix ? "" : "none";
  if (!matrix) return;
  const rows = matrix.weights.length, cols = rows ? matrix.weights[0].length : 0;
  const cell = Math.max(12, Math.min(30, Math.floor(360 / Math.max(rows, cols, 1))));
  const left = 78, top = 22;
  const canvas = $("matrix");
  canvas.width = left + cols * cell + 6;
  canvas.height = top + rows * cell + 6;
  const ctx = canvas.getContext("2d");
  const m = maxAbs(matrix.weights.flat());
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#444";
  ctx.textAlign = "center";
  for (let k = 0; k < cols; k++) ctx.fillText(String(k), left + k * cell + cell / 2, top - 7);
  ctx.textAlign = "right";
  for (let j = 0; j < rows; j++) {
    ctx.fillStyle = "#444";
    ctx.fillText(`${matrix.from}.${j}`, left - 5, top + j * cell + cell / 2 + 4);
    for (let k = 0; k < cols; k++) {
      const [r, g, b] = diverging(matrix.weights[j][k], m);
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(left + k * cell, top + j * cell, cell - 1, cell - 1);
    }
  }
  $("matrix-title").textContent = `rows ${matrix.from}, columns ${matrix.to}`;
  $("matrix-min").textContent = fmt(-m, 2);
  $("matrix-max").textContent = fmt(m, 2);
}

function drawPredictions(preds) {
  const root = $("predictions");
  const empty = root.querySelector(".empty");
  if (preds.length && empty) empty.remove();
  const keys = new Set();
  preds.slice().reverse().forEach((p, i) => {  // newest first
    const key = String(i);
    keys.add(key);
    const fig = keyed(root, key, () => {
      const f = document.createElement("figure");
      f.className = "prediction";
      const c = document.createElement("canvas");
      c.className = "digit";
      const o = document.createElement("canvas");
      o.className = "outputs";
      const cap = document.createElement("figcaption");
      f.append(c, o, cap);
      return f;
    });
    const right = p.predicted === p.target;
    fig.className = "prediction " + (right ? "right" : "wrong");
    fig.dataset.predicted = p.predicted;
    fig.dataset.target = p.target;
    fig.dataset.row = p.row;
    fig.dataset.drawn = p.shape ? "picture" : "values";
    if (p.shape) drawDigit(fig, p); else drawValues(fig, p);
    fig.title = `row ${p.row}: predicted ${p.predicted}, true ${p.target}`;
  });
  prune(root, keys);
}

function drawDigit(fig, p) {
  // the input as a grey picture, the outputs as bars under it, predicted / true
  const [h, w] = p.shape;
  const c = fig.querySelector("canvas.digit");
  c.style.display = "block";
  c.style.width = w * 4 + "px";
  c.style.height = h * 4 + "px";
  const lo = Math.min(...p.input.filter(isFinite), 0), hi = Math.max(...p.input.filter(isFinite), 1);
  paint(c, w, h, p.input, (v) => {
    const g = Math.round(255 * (1 - (v - lo) / ((hi - lo) || 1)));
    return [g, g, g];
  });
  drawOutputs(fig.querySelector("canvas.outputs"), p.output, p.predicted, p.target, c.style.width);
  const cap = fig.querySelector("figcaption");
  cap.className = "";
  cap.innerHTML = `<span class="lab">${p.predicted}</span> / ${p.target}`;
}

function drawValues(fig, p) {
  // the input as numbers: "0, 1 -> 0.97 (target 1)"; several outputs keep their bars
  fig.querySelector("canvas.digit").style.display = "none";
  const outputs = fig.querySelector("canvas.outputs");
  if (p.output.length > 1) drawOutputs(outputs, p.output, p.predicted, p.target, "120");
  else outputs.style.display = "none";
  const cap = fig.querySelector("figcaption");
  cap.className = "values lab";
  cap.textContent = p.text;
}

function drawOutputs(canvas, output, predicted, target, width) {
  // the output layer's activities as bars: the predicted one dark, the true one outlined
  const n = output.length, W = parseInt(width, 10) || 64, H = 18;
  canvas.width = W; canvas.height = H;
  canvas.style.display = "block";
  const ctx = canvas.getContext("2d");
  const top = Math.max(1, ...output.filter(isFinite));
  const bottom = Math.min(0, ...output.filter(isFinite));
  const bw = W / Math.max(n, 1);
  output.forEach((v, k) => {
    const t = isFinite(v) ? (v - bottom) / ((top - bottom) || 1) : 0;
    ctx.fillStyle = k === predicted ? "#333" : "#aab";
    ctx.fillRect(k * bw + 0.5, H - t * (H - 2), Math.max(1, bw - 1), t * (H - 2));
    if (k === target) { ctx.strokeStyle = "#2e9d4b"; ctx.strokeRect(k * bw + 0.5, 0.5, bw - 1, H - 1); }
  });
}

function chart(canvas, title, series, fixed) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 46, R = 10, T = 24, B = 30;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#222";
  ctx.textAlign = "left";
  ctx.fillText(title, L, 14);
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) {
    ctx.fillStyle = "#888";
    ctx.fillText("no epoch finished yet", L + 10, T + 40);
    return;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let y0 = fixed ? fixed[0] : Math.min(0, ...ys), y1 = fixed ? fixed[1] : Math.max(...ys) * 1.05;
  if (y0 === y1) y1 = y0 + 1;
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#e4e4e4"; ctx.fillStyle = "#666"; ctx.textAlign = "right";
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    ctx.beginPath(); ctx.moveTo(L, Y(y)); ctx.lineTo(W - R, Y(y)); ctx.stroke();
    ctx.fillText(y.toFixed(y1 - y0 < 2 ? 2 : 1), L - 4, Y(y) + 4);
  }
  ctx.textAlign = "center";
  const step = Math.max(1, Math.ceil((x1 - x0) / 8));
  for (let x = Math.ceil(x0); x <= x1; x += step) ctx.fillText(String(x), X(x), H - B + 14);
  ctx.fillText("epoch", (L + W - R) / 2, H - 4);
  let lx = L + 90;
  const drawn = [];
  for (const s of series) {
    if (!s.points.length) continue;
    const colour = CURVE_COLOURS[s.name];
    drawn.push(`${s.name}=${colour}`);
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    for (const [x, y] of s.points) { ctx.beginPath(); ctx.arc(X(x), Y(y), 3, 0, 7); ctx.fill(); }
    ctx.lineWidth = 1;
    ctx.fillRect(lx, 8, 14, 3);
    ctx.textAlign = "left";
    ctx.fillText(s.name, lx + 18, 14);
    lx += 26 + ctx.measureText(s.name).width;
  }
  canvas.dataset.curves = drawn.join(";");
}

function drawCurves(metrics) {
  const pick = (key) => metrics.filter((m) => m[key] !== null && m[key] !== undefined && isFinite(m[key]))
    .map((m) => [m.epoch, m[key]]);
  chart($("loss-chart"), "loss", [
    { name: "train", points: pick("loss") },
    { name: "held out", points: pick("holdout_loss") },
  ]);
  chart($("accuracy-chart"), "accuracy", [
    { name: "train", points: pick("accuracy") },
    { name: "last 200", points: pick("recent_accuracy") },
    { name: "held out", points: pick("holdout_accuracy") },
  ], [0, 1]);
}

function render(s) {
  const b = document.body;
  b.dataset.samples = s.samples ?? "";
  b.dataset.epoch = s.epoch ?? "";
  b.dataset.status = s.status;
  b.dataset.source = s.source ?? "";
  document.title = `exmachina: ${s.run}`;
  $("run").textContent = s.run;
  $("status").textContent = s.status;
  $("epoch").textContent = s.epoch ?? "-";
  $("samples").textContent = s.samples ?? "-";
  $("source").textContent = s.source ?? "(none yet)";
  $("updated").textContent = new Date().toLocaleTimeString();
  drawPictures(s.pictures);
  drawMatrix(s.matrix);
  drawPredictions(s.predictions);
  drawCurves(s.metrics);
}

function error(text) {
  $("error").textContent = text;
  document.body.dataset.error = text;
}

async function poll() {
  let s = null;
  try {
    const r = await fetch("/api/state", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    s = await r.json();
  } catch (e) {
    error(`viewer unreachable (${e.message}); retrying`);
  }
  if (s) {
    try {
      render(s);
      error("");
    } catch (e) {
      error(`cannot draw this state (${e.message})`);
    }
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body>
</html>
"""
)
