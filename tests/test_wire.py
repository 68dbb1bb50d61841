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
    (wire.Activity, (wire.FORWARD, 17, 3, wire.payload(np.array([0.25])))),
    (wire.Activity, (wire.INFER, 18, 0, wire.payload(np.array([-1.5, 2.0, 0.0])))),
    (wire.Error, (wire.BACKWARD, 17, 9, wire.payload(np.array([1e-12])))),
    (wire.Wiring, (wire.WIRE, wire.VERSION, ["ipc:///tmp/a"], ["tcp://127.0.0.1:5555"], 40)),
    (wire.Checkpoint, (wire.CHECKPOINT, 40)),
    (wire.Snapshot, (wire.SNAPSHOT, 4)),
    (wire.Drop, (wire.DROP, 17)),
    (wire.Stop, (wire.STOP,)),
    (wire.Hello, (wire.HELLO, wire.VERSION, "hidden1.3", 1234, {"forward": "ipc:///x"}, 0)),
    (wire.Ready, (wire.READY, "output.0")),
    (wire.State, (wire.STATE, "input.2", 4, 0.5, [0.1, 0.2], 99)),
    (wire.Stats, (wire.STATS, "hidden1.0", {"received": 10})),
]


@pytest.mark.unit
def test_every_kind_has_a_good_example():
    assert sorted(fields[0] for _, fields in GOOD) == sorted(wire.NAMES)


@pytest.mark.unit
@pytest.mark.parametrize(("record", "fields"), GOOD, ids=lambda m: getattr(m, "__name__", ""))
def test_every_kind_round_trips_into_its_record(record, fields):
    frame = wire.encode(*fields)
    message = wire.decode(frame)
    assert type(message) is record
    assert message == record(*fields)
    assert message.kind == fields[0]
    assert wire.encode(*message) == frame, "a record encodes back to the very same bytes"
    assert frame == msgpack.packb(list(fields), use_bin_type=True), "the bytes are plain msgpack arrays"


@pytest.mark.unit
def test_records_name_the_fields_of_the_protocol():
    activity = wire.decode(wire.encode(wire.FORWARD, 17, 3, wire.payload(np.array([0.25]))))
    assert (activity.sample, activity.sender, wire.values(activity.payload).tolist()) == (17, 3, [0.25])
    state = wire.decode(wire.encode(wire.STATE, "input.2", 4, 0.5, [0.1, 0.2], 99))
    assert (state.neuron, state.request, state.bias, state.weights, state.updates) == (
        "input.2",
        4,
        0.5,
        [0.1, 0.2],
        99,
    )
    hello = wire.decode(wire.encode(wire.HELLO, wire.VERSION, "h.0", 7, {"inbox": "ipc:///x"}, 3))
    assert (hello.neuron, hello.pid, hello.endpoints, hello.updates) == ("h.0", 7, {"inbox": "ipc:///x"}, 3)


# each malformed frame, and a word its WireError must contain: what is wrong with it
BAD = {
    "not msgpack": (b"\xc1garbage", "not msgpack"),
    "empty": (b"", "not msgpack"),
    "a map": (msgpack.packb({"kind": 1}), "not a message array"),
    "empty array": (msgpack.packb([]), "not a message array"),
    "unknown kind": (msgpack.packb([99, 1, 2, 3.0]), "unknown kind 99"),
    "kind not int": (msgpack.packb(["FORWARD", 1, 2, 3.0]), "unknown kind 'FORWARD'"),
    "kind a list": (msgpack.packb([[1], 1, 2, b"\x00" * 8]), "unknown kind [1]"),
    "too few fields": (msgpack.packb([wire.FORWARD, 1, 2]), "FORWARD needs 3 fields, got 2"),
    "too many fields": (msgpack.packb([wire.FORWARD, 1, 2, 3.0, 4]), "FORWARD needs 3 fields, got 4"),
    "sample not int": (msgpack.packb([wire.FORWARD, "1", 2, 3.0]), "FORWARD field sample should be int"),
    "value not bytes": (msgpack.packb([wire.BACKWARD, 1, 2, "x"]), "BACKWARD field payload should be bytes"),
    "value a float": (msgpack.packb([wire.BACKWARD, 1, 2, 0.5]), "BACKWARD field payload should be bytes"),
    "bool as int": (msgpack.packb([wire.FORWARD, True, 2, 3.0]), "FORWARD field sample should be int"),
    "stop with a field": (msgpack.packb([wire.STOP, 1]), "STOP needs 0 fields, got 1"),
    "bias an int": (msgpack.packb([wire.STATE, "a", 1, 1, [], 0]), "STATE field bias should be float: 1"),
    "ready of no one": (msgpack.packb([wire.READY, 3]), "READY field neuron should be str: 3"),
    "wiring not lists": (
        msgpack.packb([wire.WIRE, 1, "ipc:///a", [], 0]),
        "WIRE field downstream should be list: 'ipc:///a'",
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize(("frame", "why"), BAD.values(), ids=BAD.keys())
def test_a_malformed_frame_is_a_wire_error_that_says_what_is_wrong(frame, why):
    with pytest.raises(wire.WireError) as raised:
        wire.decode(frame)
    assert why in str(raised.value)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_decode(frame):
    try:
        message = wire.decode(frame)
    except wire.WireError:
        return
    assert message.kind in wire.NAMES


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(-10, 30), st.binary(max_size=16), st.lists(st.integers(-(2**63), 2**63 - 1))),
        max_size=6,
    )
)
def test_arbitrary_arrays_decode_to_a_record_or_a_wire_error(fields):
    try:
        message = wire.decode(msgpack.packb(fields, use_bin_type=True))
    except wire.WireError:
        return
    assert list(message) == fields and message.kind in wire.NAMES


@pytest.mark.unit
def test_batches_travel_as_raw_float64():
    batch = np.array([0.5, -1.25, 3e-300])
    message = wire.decode(wire.encode(wire.FORWARD, 1, 0, wire.payload(batch)))
    assert np.array_equal(wire.values(message.payload), batch)
    for bad in (b"", b"\x00" * 7, b"\x00" * 12):
        with pytest.raises(wire.WireError):
            wire.values(bad)


@pytest.mark.unit
def test_describe_names_a_synapse_message_as_the_trace_reads_it():
    message = wire.decode(wire.encode(wire.BACKWARD, 17, 3, wire.payload(np.array([0.25]))))
    assert wire.describe(message) == "BACKWARD sample=17 sender=3 value=0.25"
    assert wire.describe(wire.decode(wire.encode(wire.DROP, 17))) == "DROP [17]"


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


# -- group frames: every value ready for one link at once ---------------------------------------------

GROUPS = [
    (wire.Activities, (wire.FORWARD, [4, 5, 6], 3, wire.payload(np.array([0.25, -1.0, 2.0])))),
    (wire.Activities, (wire.INFER, [9, 10], 0, wire.payload(np.arange(8.0)))),  # two batches of 4
    (wire.Errors, (wire.BACKWARD, [4, 5], 1, wire.payload(np.array([1e-12, -3.0])))),
]


@pytest.mark.unit
@pytest.mark.parametrize(("record", "fields"), GROUPS, ids=["forward", "infer", "backward"])
def test_a_group_frame_round_trips_into_its_record_and_splits_into_its_samples(record, fields):
    kind, samples, sender, data = fields
    frame = wire.encode(*fields)
    message = wire.decode(frame)
    assert type(message) is record and message == record(*fields)
    assert wire.encode(*message) == frame
    values = wire.values(data).reshape(len(samples), -1)
    parts = wire.parts(message)
    assert [sample for sample, _ in parts] == samples
    for (_, part), expected in zip(parts, values):
        assert np.array_equal(wire.values(part), expected)
    singles = wire.singles(message)
    assert [wire.encode(*one) for one in singles] == [
        wire.encode(kind, s, sender, wire.payload(v)) for s, v in zip(samples, values)
    ], "a group carries exactly what single-sample frames of its samples would"


@pytest.mark.unit
def test_a_single_sample_frame_is_one_part():
    message = wire.decode(wire.encode(wire.FORWARD, 17, 3, wire.payload(np.array([0.25, 0.5]))))
    assert wire.parts(message) == [(17, message.payload)] and wire.singles(message) == [message]


GROUP_BAD = {
    "no samples": (msgpack.packb([wire.FORWARD, [], 0, b"\x00" * 8]), "non-empty list of int"),
    "a sample not int": (msgpack.packb([wire.FORWARD, [1, "2"], 0, b"\x00" * 16]), "non-empty list of int"),
    "a bool sample": (msgpack.packb([wire.BACKWARD, [1, True], 0, b"\x00" * 16]), "non-empty list of int"),
    "a sample twice": (msgpack.packb([wire.FORWARD, [3, 3], 0, b"\x00" * 16]), "names a sample twice"),
    "sender not int": (msgpack.packb([wire.INFER, [1, 2], "0", b"\x00" * 16]), "sender should be int"),
    "uneven payload": (msgpack.packb([wire.FORWARD, [1, 2], 0, b"\x00" * 24]), "2 equal batches"),
    "payload a float": (msgpack.packb([wire.BACKWARD, [1], 0, 0.5]), "1 equal batches"),
    "a control kind": (msgpack.packb([wire.DROP, [1, 2]]), "DROP field sample should be int"),
}


@pytest.mark.unit
@pytest.mark.parametrize(("frame", "why"), GROUP_BAD.values(), ids=GROUP_BAD.keys())
def test_a_malformed_group_frame_is_a_wire_error_that_says_what_is_wrong(frame, why):
    with pytest.raises(wire.WireError) as raised:
        wire.decode(frame)
    assert why in str(raised.value)


@pytest.mark.unit
def test_describe_shows_a_group_and_the_log_reads_it_sample_by_sample():
    message = wire.decode(wire.encode(wire.BACKWARD, [17, 18], 3, wire.payload(np.array([0.25, 0.5]))))
    assert wire.describe(message) == "BACKWARD samples=[17, 18] sender=3 values=[0.25 0.5](2)"
    assert [wire.describe(one) for one in wire.singles(message)] == [
        "BACKWARD sample=17 sender=3 value=0.25",
        "BACKWARD sample=18 sender=3 value=0.5",
    ]
