"""The HTTP front of a serving network: JSON rows in, JSON outputs out.

    POST /predict  {"inputs": [[...], ...]}  ->  {"outputs": [[...], ...]}
    GET  /         the model served: layer sizes and activations, limits
    GET  /health   {"status": "ok", ...}

The standard library's ThreadingHTTPServer, a thread per connection. A request's rows are checked here
and handed to the serving coordinator's loop (server.py) through its inlet; the thread waits on the
answer's future. Every refusal is one JSON line, {"error": "..."}: 400 for a body that is not rows of
the model's width (naming the first bad row), 413 for one over the limits, judged by its Content-Length
before a byte of it is read, 503 when the network cannot answer now. At most PARSERS bodies are read
and parsed at once, so concurrent large requests cannot add up past a bound.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from exmachina.web import LocalHTTPServer

if TYPE_CHECKING:
    from exmachina.network.server import Server

MAX_BODY_BYTES = 8 * 2**20  # a request's body, by its Content-Length
MAX_ROWS = 100_000  # rows in one request
PARSERS = 4  # bodies read and parsed at once
ANSWER_TIMEOUT_S = 600.0  # a request still unanswered then gets 504 (the network replays a stall
# MAX_REPLAYS times at stall_timeout before it fails the request itself)


class Unavailable(RuntimeError):
    """A request the network cannot answer now (busy, stalled, shutting down): HTTP 503."""


class Refused(ValueError):
    """A request refused with `status` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_rows(body: bytes, width: int, max_rows: int = MAX_ROWS) -> np.ndarray:
    """The rows of a request body as a (rows, width) float array; raises Refused saying what is wrong."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise Refused(400, 'expected {"inputs": [[...], ...]}: a list of rows')
    inputs = request["inputs"]
    if len(inputs) > max_rows:
        raise Refused(413, f"{len(inputs)} rows: at most {max_rows} a request")
    for i, row in enumerate(inputs):
        if not isinstance(row, list):
            raise Refused(400, f"row {i} is not a list of numbers")
        if len(row) != width:
            raise Refused(400, f"row {i} has {len(row)} values, the model takes {width}")
    if not inputs:
        return np.zeros((0, width))
    try:
        rows = np.array(inputs)
    except ValueError:  # a row holding lists
        rows = None
    # NumPy reads true and false as numbers, and integers past int64 as objects: look closer then
    if rows is None or rows.dtype.kind not in "iuf" or b"true" in body or b"false" in body:
        bad = _first_not_numbers(inputs)
        if bad is not None:
            raise Refused(400, f"row {bad} holds a value that is not a number")
    rows = np.asarray(inputs if rows is None or rows.dtype.kind not in "iuf" else rows, dtype=float)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise Refused(400, f"row {int(np.argmin(finite))} holds a value that is not a finite number")
    return rows


def _first_not_numbers(inputs: list) -> int | None:
    """The first row holding anything but floats and integers a float can hold, if any."""
    for i, row in enumerate(inputs):
        for v in row:
            if not (type(v) is float or (type(v) is int and abs(v) < 1e308)):
                return i
    return None


class Front(LocalHTTPServer):
    daemon_threads = True  # a client holding a connection open never keeps the process alive
    request_queue_size = 128  # connections the kernel holds until accepted: many clients connect at once

    def __init__(self, address: tuple[str, int], server: Server, about: dict[str, Any]) -> None:
        """Bound at once (port 0: the one the OS gives, read back in `url`); serving after `start`."""
        self.network, self.about = server, about
        self.width = about["inputs"]
        self.parsers = threading.BoundedSemaphore(PARSERS)
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting connections (a request being answered is failed by the network's side)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()

    def health(self) -> dict[str, Any]:
        n = self.network
        return {"status": "ok", "requests": n.requests, "rows": n.rows, "restarts": n.restarts}


class _Handler(BaseHTTPRequestHandler):
    server: Front
    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share one connection
    timeout = 30  # an idle connection frees its thread

    def do_GET(self) -> None:  # the name http.server calls
        path = urlsplit(self.path).path
        if path == "/":
            self._json(200, self.server.about)
        elif path == "/health":
            self._json(200, self.server.health())
        else:
            self._json(404, {"error": f"no {path} here: POST /predict, GET / or GET /health"})

    def do_POST(self) -> None:
        try:
            if urlsplit(self.path).path != "/predict":
                self.close_connection = True  # its body, if any, is left unread
                raise Refused(404, f"no {urlsplit(self.path).path} here: POST /predict")
            length = self._length()
            with self.server.parsers:
                rows = parse_rows(self.rfile.read(length), self.server.width)
            outputs = self._predict(rows)
        except Refused as refusal:
            self._json(refusal.status, {"error": str(refusal)})
            return
        self._json(200, {"outputs": outputs.tolist()})

    def handle_expect_100(self) -> bool:
        """A client that asks before sending its body is refused then, if the body is too large."""
        try:
            self._length()
        except Refused as refusal:
            self._json(refusal.status, {"error": str(refusal)})
            return False
        return super().handle_expect_100()

    def _length(self) -> int:
        """The body's length from Content-Length, checked against the limit before anything is read.
        A refusal here closes the connection: the body it did not read is still on the wire."""
        text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or text is None:
            self.close_connection = True
            raise Refused(411, "a request needs a Content-Length (no chunked bodies)")
        try:
            length = int(text)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise Refused(400, f"Content-Length {text!r} is not a length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise Refused(413, f"a body of {length} bytes: at most {MAX_BODY_BYTES}")
        return length

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.server.about["outputs"]))
        try:
            return self.server.network.inlet.submit(rows).result(ANSWER_TIMEOUT_S)
        except Unavailable as exc:
            raise Refused(503, str(exc)) from None
        except FutureTimeout:
            raise Refused(504, f"no answer in {ANSWER_TIMEOUT_S:.0f} s") from None

    def _json(self, code: int, value: Any) -> None:
        body = (json.dumps(value, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        pass  # a line per request would drown the terminal
