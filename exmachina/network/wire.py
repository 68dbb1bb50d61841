"""The wire protocol, defined once: every message exmachina sends, as msgpack arrays.

The first element is always the kind. Synapse traffic, the hot path, is four small fields:

    [FORWARD,  sample, sender, values]  activity of `sender`, already weighted by the sender's axon
    [INFER,    sample, sender, values]  the same for a forward-only (evaluation) sample: nothing is kept
    [BACKWARD, sample, sender, values]  the error (delta) of `sender`, back along the synapse

`values` is raw little-endian float64 bytes: one value per sample of the batch (one, online), read
with numpy.frombuffer; a "sample" id names the whole batch.

`sender` is the sender's index in its layer, which is the receiver's synapse number; the
coordinator is sender 0 to the input and output layers. Control traffic names neurons by id:

    coordinator -> neuron:  [WIRE, version, downstream endpoints, upstream endpoints, updates]
                            [SNAPSHOT, request]        [CHECKPOINT, count]
                            [DROP, sample]             [STOP]
    neuron -> coordinator:  [HELLO, version, neuron, pid, {"inbox": endpoint}, updates]
                            [READY, neuron]            [STATE, neuron, request, bias, weights, updates]
                            [STATS, neuron, {...}]

`updates` in HELLO is the count a neuron's weights stand at (a restarted neuron: its checkpoint's);
in WIRE it is the count the network stands at, so the neuron knows how many updates it lost. STATE
answers both SNAPSHOT and CHECKPOINT (then `request` is the count written).

A frame that does not decode to one of these shapes raises `WireError`: the receiver drops it,
counts it and logs it, and carries on.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

VERSION = 1

FORWARD, INFER, BACKWARD = 1, 2, 3
WIRE, SNAPSHOT, DROP, STOP, CHECKPOINT = 10, 11, 12, 13, 14
HELLO, READY, STATE, STATS = 20, 21, 22, 23

NAMES = {
    FORWARD: "FORWARD",
    INFER: "INFER",
    BACKWARD: "BACKWARD",
    WIRE: "WIRE",
    SNAPSHOT: "SNAPSHOT",
    DROP: "DROP",
    STOP: "STOP",
    CHECKPOINT: "CHECKPOINT",
    HELLO: "HELLO",
    READY: "READY",
    STATE: "STATE",
    STATS: "STATS",
}

# The exact Python type of each field after the kind (msgpack gives exact int/float/str/list/dict).
_SHAPES: dict[int, tuple[type, ...]] = {
    FORWARD: (int, int, bytes),
    INFER: (int, int, bytes),
    BACKWARD: (int, int, bytes),
    WIRE: (int, list, list, int),
    SNAPSHOT: (int,),
    DROP: (int,),
    STOP: (),
    CHECKPOINT: (int,),
    HELLO: (int, str, int, dict, int),
    READY: (str,),
    STATE: (str, int, float, list, int),
    STATS: (str, dict),
}

SYNAPSE_KINDS = frozenset({FORWARD, INFER, BACKWARD})


class WireError(ValueError):
    """A frame that is not a well-formed exmachina message."""


_pack = msgpack.Packer(use_bin_type=True).pack


def encode(kind: int, *fields: Any) -> bytes:
    return _pack([kind, *fields])


def decode(frame: bytes) -> list:
    """The message as a list [kind, fields...]; raises WireError for anything malformed."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError(f"not msgpack ({type(exc).__name__})") from None
    if (  # the hot path, a synapse message, checked in one expression
        type(message) is list
        and len(message) == 4
        and message[0] in SYNAPSE_KINDS
        and type(message[1]) is int
        and type(message[2]) is int
        and type(message[3]) is bytes
    ):
        return message
    if type(message) is not list or not message:
        raise WireError(f"not a message array: {_short(message)}")
    shape = _SHAPES.get(message[0]) if type(message[0]) is int else None
    if shape is None:
        raise WireError(f"unknown kind {_short(message[0])}")
    if len(message) != len(shape) + 1:
        raise WireError(f"{NAMES[message[0]]} needs {len(shape)} fields, got {len(message) - 1}")
    for position, (value, expected) in enumerate(zip(message[1:], shape), start=1):
        if type(value) is not expected:
            raise WireError(
                f"{NAMES[message[0]]} field {position} should be {expected.__name__}: {_short(value)}"
            )
    return message


def batch_size(payload: bytes) -> int:
    """How many values a synapse message carries; raises WireError if it is not whole float64s."""
    if not payload or len(payload) % 8:
        raise WireError(f"a batch of float64 needs a multiple of 8 bytes, got {len(payload)}")
    return len(payload) // 8


def values(payload: bytes) -> np.ndarray:
    """The batch a synapse message carries (or several, back to back); raises WireError if it is not
    whole float64s."""
    batch_size(payload)
    return np.frombuffer(payload, dtype="<f8")


def payload(batch: np.ndarray) -> bytes:
    return np.ascontiguousarray(batch, dtype="<f8").tobytes()


def describe(message: list) -> str:
    """A short human form for logs: `FORWARD sample=17 sender=3 value=0.25`."""
    kind = message[0]
    if kind in SYNAPSE_KINDS:
        return f"{NAMES[kind]} sample={message[1]} sender={message[2]} value={show(message[3])}"
    return f"{NAMES[kind]} {_short(message[1:])}"


def show(data: bytes | np.ndarray) -> str:
    """A batch for people: `0.25` online, `[0.25 0.5 ...](32)` for a batch."""
    batch = values(data) if isinstance(data, bytes) else data
    if len(batch) == 1:
        return f"{batch[0]:.6g}"
    head = " ".join(f"{v:.4g}" for v in batch[:3])
    return f"[{head}{' ...' if len(batch) > 3 else ''}]({len(batch)})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
