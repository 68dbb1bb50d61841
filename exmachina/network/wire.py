"""The wire protocol, defined once: every message exmachina sends, as msgpack arrays.

The first element is always the kind. Synapse traffic, the hot path, is four small fields:

    [FORWARD,  sample, sender, payload]  activity of `sender`, already weighted by the sender's axon
    [INFER,    sample, sender, payload]  the same for a forward-only (evaluation) sample: nothing is kept
    [BACKWARD, sample, sender, payload]  the error (delta) of `sender`, back along the synapse

`payload` is raw little-endian float64 bytes: one value per sample of the batch (one, online), read
with numpy.frombuffer; a "sample" id names the whole batch.

With several batches in flight, every value ready for the same link at once travels in one frame:
the sample field is then a list of ids, and the payload their batches back to back, in that order
(all of one size):

    [FORWARD,  [sample, ...], sender, payload]    and the same for INFER and BACKWARD

One frame costs one send, one wakeup and one decode whatever it carries, which is what the messages
of a pipelined network cost. A receiver gathers such a group as one (its senders all send the same
group, in the same order), so the math per sample is the same as for single frames.

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

`encode(kind, *fields)` writes any of them. `decode(frame)` reads one back as its record, a named
tuple whose fields are the array's, kind first (`Activity`, `Error`, `Activities`, `Errors`,
`Wiring`, ...): so
`encode(*decode(frame))` gives the frame back, and a receiver reads `message.sample`, not
`message[1]`. A frame that does not decode to one of these shapes raises `WireError`: the receiver
drops it, counts it and logs it, and carries on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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

SYNAPSE_KINDS = frozenset({FORWARD, INFER, BACKWARD})


# -- the records: one per message kind (FORWARD and INFER share one), fields in wire order -------------


class Activity(NamedTuple):
    """FORWARD or INFER: `sender`'s activity for `sample`, already weighted by its axon."""

    kind: int
    sample: int
    sender: int
    payload: bytes


class Error(NamedTuple):
    """BACKWARD: `sender`'s error (delta) for `sample`, back along the synapse. A learning signal,
    not an exception."""

    kind: int
    sample: int
    sender: int
    payload: bytes


class Activities(NamedTuple):
    """FORWARD or INFER for several samples at once: their batches back to back in `payload`."""

    kind: int
    samples: list
    sender: int
    payload: bytes


class Errors(NamedTuple):
    """BACKWARD for several samples at once: their batches back to back in `payload`."""

    kind: int
    samples: list
    sender: int
    payload: bytes


class Wiring(NamedTuple):
    """WIRE: where a neuron's synapses lead, and the update count the network stands at."""

    kind: int
    version: int
    downstream: list
    upstream: list
    updates: int


class Snapshot(NamedTuple):
    """SNAPSHOT: report your state (answered by STATE with the same `request`)."""

    kind: int
    request: int


class Drop(NamedTuple):
    """DROP: forget `sample`, it will be replayed under a new id."""

    kind: int
    sample: int


class Stop(NamedTuple):
    """STOP: finish the message in hand and exit."""

    kind: int


class Checkpoint(NamedTuple):
    """CHECKPOINT: save your state at update `count` (answered by STATE with request `count`)."""

    kind: int
    count: int  # type: ignore[assignment]  # a field may shadow tuple.count: the record is read by name


class Hello(NamedTuple):
    """HELLO: a neuron is bound at `endpoints` and its weights stand at `updates`."""

    kind: int
    version: int
    neuron: str
    pid: int
    endpoints: dict
    updates: int


class Ready(NamedTuple):
    """READY: a neuron is wired."""

    kind: int
    neuron: str


class State(NamedTuple):
    """STATE: a neuron's bias and outgoing weights, answering SNAPSHOT or CHECKPOINT `request`."""

    kind: int
    neuron: str
    request: int
    bias: float
    weights: list
    updates: int


class Stats(NamedTuple):
    """STATS: a neuron's periodic counters."""

    kind: int
    neuron: str
    stats: dict


Synapse = Activity | Error | Activities | Errors
Message = Synapse | Wiring | Snapshot | Drop | Stop | Checkpoint | Hello | Ready | State | Stats

# Each kind's record and the exact Python type of each field after the kind (msgpack gives exact
# int/float/str/bytes/list/dict, so `type(x) is t` also refuses a bool where an int belongs).
_RECORDS: dict[int, tuple[type[Message], tuple[type, ...]]] = {
    FORWARD: (Activity, (int, int, bytes)),
    INFER: (Activity, (int, int, bytes)),
    BACKWARD: (Error, (int, int, bytes)),
    WIRE: (Wiring, (int, list, list, int)),
    SNAPSHOT: (Snapshot, (int,)),
    DROP: (Drop, (int,)),
    STOP: (Stop, ()),
    CHECKPOINT: (Checkpoint, (int,)),
    HELLO: (Hello, (int, str, int, dict, int)),
    READY: (Ready, (str,)),
    STATE: (State, (str, int, float, list, int)),
    STATS: (Stats, (str, dict)),
}
_SYNAPSE_RECORDS = {kind: record for kind, (record, _) in _RECORDS.items() if kind in SYNAPSE_KINDS}
_GROUP_RECORDS: dict[int, type[Activities] | type[Errors]] = {
    FORWARD: Activities,
    INFER: Activities,
    BACKWARD: Errors,
}
SYNAPSE_RECORDS = (Activity, Error, Activities, Errors)
_new = tuple.__new__  # a record from the decoded list as it is: no per-field call


class WireError(ValueError):
    """A frame that is not a well-formed exmachina message."""


_pack = msgpack.Packer(use_bin_type=True).pack


def encode(kind: int, *fields: Any) -> bytes:
    """The frame of one message; `encode(*record)` is the frame a record was decoded from."""
    return _pack([kind, *fields])


def decode(frame: bytes) -> Message:
    """The message as its record; raises WireError naming what is wrong with anything malformed."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError(f"not msgpack ({type(exc).__name__})") from None
    if (  # the hot path, a synapse message, checked in one expression
        type(message) is list
        and len(message) == 4
        and type(message[0]) is int
        and type(message[1]) is int
        and type(message[2]) is int
        and type(message[3]) is bytes
        and (record := _SYNAPSE_RECORDS.get(message[0])) is not None
    ):
        return _new(record, message)
    if (  # several samples' values for one link in one frame
        type(message) is list
        and len(message) == 4
        and type(message[0]) is int
        and type(message[1]) is list
        and (record := _GROUP_RECORDS.get(message[0])) is not None
    ):
        return _new(_group_checked(record, message), message)
    return _new(_checked(message), message)


def _group_checked(record: type, message: list) -> type:
    """The record of a well-formed group frame; raises WireError naming what is wrong."""
    name, (samples, sender, data) = NAMES[message[0]], message[1:]
    if not samples or not all(type(s) is int for s in samples):
        raise WireError(f"{name} field samples should be a non-empty list of int: {_short(samples)}")
    if len(set(samples)) != len(samples):
        raise WireError(f"{name} names a sample twice: {_short(samples)}")
    if type(sender) is not int:
        raise WireError(f"{name} field sender should be int: {_short(sender)}")
    if type(data) is not bytes or not data or len(data) % (8 * len(samples)):
        raise WireError(f"{name} payload is not {len(samples)} equal batches of float64")
    return record


def parts(message: Synapse) -> list[tuple[int, bytes]]:
    """(sample, its batch's bytes) for each sample a synapse message carries, in wire order."""
    if isinstance(message, (Activity, Error)):
        return [(message.sample, message.payload)]
    data, samples = message.payload, message.samples
    size = len(data) // len(samples)
    return [(sample, data[i * size : (i + 1) * size]) for i, sample in enumerate(samples)]


def _checked(message: Any) -> type[Message]:
    """The record type of a message that is not a well-formed synapse message; raises WireError."""
    if type(message) is not list or not message:
        raise WireError(f"not a message array: {_short(message)}")
    record, shape = _RECORDS.get(message[0], (None, ())) if type(message[0]) is int else (None, ())
    if record is None:
        raise WireError(f"unknown kind {_short(message[0])}")
    name = NAMES[message[0]]
    if len(message) != len(shape) + 1:
        raise WireError(f"{name} needs {len(shape)} fields, got {len(message) - 1}")
    for field, value, expected in zip(record._fields[1:], message[1:], shape):
        if type(value) is not expected:
            raise WireError(f"{name} field {field} should be {expected.__name__}: {_short(value)}")
    return record


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


def singles(message: Synapse) -> list[Activity | Error]:
    """A synapse message as one single-sample record per sample it carries (for logs)."""
    record = Error if message.kind == BACKWARD else Activity
    return [record(message.kind, sample, message.sender, data) for sample, data in parts(message)]


def describe(message: Message) -> str:
    """A short human form for logs: `FORWARD sample=17 sender=3 value=0.25`."""
    name = NAMES[message.kind]
    if isinstance(message, (Activities, Errors)):
        return f"{name} samples={message.samples} sender={message.sender} values={show(message.payload)}"
    if isinstance(message, (Activity, Error)):
        return f"{name} sample={message.sample} sender={message.sender} value={show(message.payload)}"
    return f"{name} {_short(list(message[1:]))}"


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
