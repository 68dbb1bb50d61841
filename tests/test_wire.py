"""The wire protocol: every kind round-trips; anything malformed is a WireError, never a crash.
And the transport under it holds as many sockets as a big network needs."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from exmachina.network import transport, wire

GOOD = [
    (wire.FORWARD, 17, 3, wire.payload(np.array([0.25]))),
    (wire.INFER, 18, 0, wire.payload(np.array([-1.5, 2.0, 0.0]))),
    (wire.BACKWARD, 17, 9, wire.payload(np.array([1e-12]))),
    (wire.WIRE, wire.VERSION, ["ipc:///tmp/a"], ["tcp://127.0.0.1:5555"], 40),
    (wire.CHECKPOINT, 40),
    (wire.SNAPSHOT, 4),
    (wire.DROP, 17),
    (wire.STOP,),
    (wire.HELLO, wire.VERSION, "hidden1.3", 1234, {"forward": "ipc:///x"}, 0),
    (wire.READY, "output.0"),
    (wire.STATE, "input.2", 4, 0.5, [0.1, 0.2], 99),
    (wire.STATS, "hidden1.0", {"received": 10}),
]


@pytest.mark.parametrize("message", GOOD, ids=lambda m: wire.NAMES[m[0]])
def test_round_trip(message):
    assert wire.decode(wire.encode(*message)) == list(message)


BAD = {
    "not msgpack": b"\xc1garbage",
    "empty": b"",
    "a map": msgpack.packb({"kind": 1}),
    "empty array": msgpack.packb([]),
    "unknown kind": msgpack.packb([99, 1, 2, 3.0]),
    "kind not int": msgpack.packb(["FORWARD", 1, 2, 3.0]),
    "too few fields": msgpack.packb([wire.FORWARD, 1, 2]),
    "too many fields": msgpack.packb([wire.FORWARD, 1, 2, 3.0, 4]),
    "sample not int": msgpack.packb([wire.FORWARD, "1", 2, 3.0]),
    "value not bytes": msgpack.packb([wire.BACKWARD, 1, 2, "x"]),
    "value a float": msgpack.packb([wire.BACKWARD, 1, 2, 0.5]),
    "bool as int": msgpack.packb([wire.FORWARD, True, 2, 3.0]),
}


@pytest.mark.parametrize("frame", BAD.values(), ids=BAD.keys())
def test_malformed_frames_raise_wire_error(frame):
    with pytest.raises(wire.WireError):
        wire.decode(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_decode(frame):
    try:
        message = wire.decode(frame)
    except wire.WireError:
        return
    assert message[0] in wire.NAMES


def test_batches_travel_as_raw_float64():
    batch = np.array([0.5, -1.25, 3e-300])
    message = wire.decode(wire.encode(wire.FORWARD, 1, 0, wire.payload(batch)))
    assert np.array_equal(wire.values(message[3]), batch)
    for bad in (b"", b"\x00" * 7, b"\x00" * 12):
        with pytest.raises(wire.WireError):
            wire.values(bad)


def test_a_context_holds_more_sockets_than_libzmqs_default_1023():
    """The coordinator holds a control link per neuron: 2,000 neurons need 2,000+ sockets."""
    ctx = transport.context(sockets=2_000)
    sockets = []
    try:
        assert ctx.get(zmq.MAX_SOCKETS) >= 2_000
        sockets = [ctx.socket(zmq.PUSH) for _ in range(2_000)]
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
