"""Checkpoint files on their own, no process started: written whole, read back exactly, and any
damaged byte refused by name instead of loading as a wrong weight."""

from __future__ import annotations

import numpy as np
import pytest

from exmachina.rundir import checkpoints
from exmachina.rundir.checkpoints import CheckpointError

pytestmark = pytest.mark.unit


def _state() -> dict:
    return checkpoints.neuron_state(np.array([0.25, -1.5, 3.0]), bias=0.125, updates=7)


def test_a_checkpoint_reads_back_exactly(tmp_path):
    checkpoints.save(tmp_path, "hidden1.0", 40, _state())
    state = checkpoints.load(tmp_path, "hidden1.0", 40)
    assert state["owner"] == "hidden1.0" and state["count"] == 40 and state["updates"] == 7
    assert state["bias"] == 0.125
    assert checkpoints.weights_of(state).tolist() == [0.25, -1.5, 3.0]
    assert not list(checkpoints.directory(tmp_path).glob(".*.tmp"))


def test_only_the_newest_keep_files_stay(tmp_path):
    for count in range(0, 60, 10):
        checkpoints.save(tmp_path, "output.0", count, _state())
    assert checkpoints.counts(tmp_path, "output.0") == [30, 40, 50]


def test_every_flipped_byte_is_refused(tmp_path):
    path = checkpoints.save(tmp_path, "hidden1.0", 40, _state())
    whole = path.read_bytes()
    for offset in range(len(whole)):
        data = bytearray(whole)
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=r"000000000040\.ckpt: (damaged|unreadable|not a)"):
            checkpoints.load(tmp_path, "hidden1.0", 40)


def test_a_flipped_bit_in_a_weight_is_a_checksum_mismatch(tmp_path):
    path = checkpoints.save(tmp_path, "hidden1.0", 40, _state())
    data = bytearray(path.read_bytes())
    weights = np.array([0.25, -1.5, 3.0]).astype("<f8").tobytes()
    at = bytes(data).index(weights)
    data[at + 7] ^= 0x7F  # the sign and exponent of the first weight: 0.25 -> NaN or a huge number
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoints.load(tmp_path, "hidden1.0", 40)


def test_a_file_of_another_owner_or_count_is_refused(tmp_path):
    path = checkpoints.save(tmp_path, "hidden1.0", 40, _state())
    path.rename(path.with_name("hidden1.1.000000000040.ckpt"))
    with pytest.raises(CheckpointError, match=r"not a checkpoint of hidden1\.1 at 40"):
        checkpoints.load(tmp_path, "hidden1.1", 40)


def test_the_consistent_cut_is_the_newest_count_every_owner_has(tmp_path):
    for owner, counts in {"a": [10, 20, 30], "b": [10, 20], "coordinator": [20, 30]}.items():
        for count in counts:
            checkpoints.save(tmp_path, owner, count, _state())
    assert checkpoints.common_count(tmp_path, ["a", "b", "coordinator"]) == 20
    checkpoints.discard_after(tmp_path, ["a", "b", "coordinator"], 20)
    assert checkpoints.counts(tmp_path, "a") == [10, 20]
    assert checkpoints.counts(tmp_path, "coordinator") == [20]


def test_pruning_below_the_cut_keeps_the_cut_and_everything_newer(tmp_path):
    # `b` lags behind (its files come home late): the cut is 20, however many newer ones `a` has
    for owner, counts in {"a": [0, 20, 40, 60, 80], "b": [0, 20], "coordinator": [0, 20, 40, 60, 80]}.items():
        for count in counts:
            checkpoints.save(tmp_path, owner, count, _state(), keep=None)
    removed = checkpoints.prune_below_cut(tmp_path, ["a", "b", "coordinator"])
    assert sorted(removed) == [f"checkpoints/{o}.{0:012d}.ckpt" for o in ("a", "b", "coordinator")]
    assert checkpoints.counts(tmp_path, "a") == [20, 40, 60, 80]
    assert checkpoints.counts(tmp_path, "b") == [20]
    assert checkpoints.common_count(tmp_path, ["a", "b", "coordinator"]) == 20
    # with no cut shared (an owner has no file yet) nothing goes
    assert checkpoints.prune_below_cut(tmp_path, ["a", "b", "c"]) == []
    assert checkpoints.counts(tmp_path, "a") == [20, 40, 60, 80]
