"""The datasets: the packaged Semeion digits, CSV files, the truth tables, splits and epoch order."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from exmachina.config import config_from_dict, load_config
from exmachina.data import SEMEION_DATA, datasets
from exmachina.data.datasets import DatasetError, load_csv, load_semeion
from tests.helpers import xor_config

pytestmark = pytest.mark.unit

DIGITS = {
    "layers": [{"name": "input", "size": 256}, {"name": "hidden", "size": 4}, {"name": "output", "size": 10}]
}


@pytest.fixture(scope="module")
def semeion() -> datasets.Dataset:
    return load_semeion(SEMEION_DATA)


def test_the_packaged_semeion_file_is_the_whole_data_set(semeion):
    assert semeion.inputs.shape == (1593, 256) and semeion.targets.shape == (1593, 10)
    assert set(np.unique(semeion.inputs)) == {0.0, 1.0}
    np.testing.assert_array_equal(semeion.targets.sum(axis=1), 1.0)
    per_digit = semeion.targets.sum(axis=0)
    assert per_digit.min() >= 150 and per_digit.max() <= 170  # about 80 writers, each digit twice
    assert (SEMEION_DATA.parent / "SEMEION.md").is_file()  # source, attribution and licence


def test_a_semeion_source_without_a_path_reads_the_packaged_file(semeion):
    config = config_from_dict(xor_config(network=DIGITS, data={"source": "semeion"}))
    data = datasets.load(config)
    np.testing.assert_array_equal(data.inputs, semeion.inputs)


def test_a_given_semeion_path_still_wins_and_is_relative_to_the_config(tmp_path, semeion):
    lines = SEMEION_DATA.read_text().splitlines()
    (tmp_path / "few.data").write_text("\n".join(lines[:5]) + "\n")
    raw = xor_config(network=DIGITS, data={"source": "semeion", "path": "few.data"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    data = datasets.load(load_config(tmp_path / "config.yaml"))
    np.testing.assert_array_equal(data.inputs, semeion.inputs[:5])


def test_a_limit_takes_a_subset_fixed_by_the_seed_in_file_order(tmp_path):
    rows = np.hstack([np.arange(30)[:, None], np.repeat(np.eye(3), 10, axis=0)])  # sorted by class
    np.savetxt(tmp_path / "rows.csv", rows, delimiter=",")
    raw = xor_config(
        network={"layers": [{"name": "input", "size": 1}, {"name": "output", "size": 3}]},
        data={"source": "csv", "path": "rows.csv", "targets": 3, "limit": 12},
    )
    config = config_from_dict(raw, source=str(tmp_path / "config.yaml"))
    once, again = datasets.load(config), datasets.load(config)
    np.testing.assert_array_equal(once.inputs, again.inputs)
    picked = once.inputs[:, 0]
    assert len(once) == 12 and list(picked) == sorted(set(picked))
    assert len(np.unique(once.targets.argmax(axis=1))) > 1  # not the first rows of a sorted file
    other = datasets.load(config_from_dict({**raw, "seed": 4}, source=str(tmp_path / "config.yaml")))
    assert not np.array_equal(other.inputs, once.inputs)


def test_a_network_too_narrow_for_its_data_names_the_layer():
    config = config_from_dict(
        xor_config(network={"layers": [{"name": "input", "size": 3}, {"name": "output", "size": 1}]})
    )
    with pytest.raises(DatasetError) as caught:
        datasets.load(config)
    assert (
        str(caught.value) == "<memory>: network.layers[0].size: 3 input neurons, but xor rows have 2 inputs"
    )
    config = config_from_dict(
        xor_config(network={"layers": [{"name": "input", "size": 2}, {"name": "o", "size": 2}]})
    )
    with pytest.raises(
        DatasetError, match=r"layers\[1\].size: 2 output neurons, but xor rows have 1 targets"
    ):
        datasets.load(config)


@pytest.mark.parametrize(
    ("name", "table"), [("xor", [0, 1, 1, 0]), ("and", [0, 0, 0, 1]), ("or", [0, 1, 1, 1])]
)
def test_the_truth_tables(name, table):
    data = datasets.builtin(name)
    np.testing.assert_array_equal(data.inputs, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(data.targets[:, 0], table)


def test_csv_rows_take_commas_or_spaces_and_skip_comments(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("# x1, x2, y1, y2\n1, 2, 3, 4\n\n5 6 7 8\n")
    data = load_csv(path, 2)
    assert data.name == "rows"
    np.testing.assert_array_equal(data.inputs, [[1, 2], [5, 6]])
    np.testing.assert_array_equal(data.targets, [[3, 4], [7, 8]])


@pytest.mark.parametrize(
    ("text", "targets", "problem"),
    [
        ("1,2,3\n1,2\n", 1, "rows.csv:2: expected 3 values, found 2"),
        ("1,2\n", 2, "rows.csv: 2 values a row leave no inputs before 2 targets"),
        ("1,two,3\n", 1, "rows.csv:1: 'two' is not a number"),
        ("# only a comment\n", 1, "rows.csv: no rows"),
    ],
)
def test_bad_csv_rows_are_reported_by_line(tmp_path, text, targets, problem):
    (tmp_path / "rows.csv").write_text(text)
    with pytest.raises(DatasetError) as caught:
        load_csv(tmp_path / "rows.csv", targets)
    assert str(caught.value) == f"{tmp_path}/{problem}"


def test_a_missing_or_empty_semeion_file_is_one_line(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_semeion(tmp_path / "absent.data")
    assert (
        str(caught.value) == f"{tmp_path / 'absent.data'}: cannot read data file: No such file or directory"
    )
    (tmp_path / "empty.data").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.data: no rows"):
        load_semeion(tmp_path / "empty.data")


def test_a_split_is_disjoint_complete_and_fixed_by_the_seed(semeion):
    train, held = datasets.split(semeion, 0.2, seed=1)
    assert len(held) == round(0.2 * len(semeion)) and len(train) + len(held) == len(semeion)
    again, _ = datasets.split(semeion, 0.2, seed=1)
    np.testing.assert_array_equal(train.inputs, again.inputs)
    other, _ = datasets.split(semeion, 0.2, seed=2)
    assert not np.array_equal(train.inputs, other.inputs)
    small = datasets.builtin("xor")
    train, held = datasets.split(small, 0.0, seed=1)
    assert train is small and held is small  # nothing held out: evaluation runs on the training rows
    assert len(datasets.split(small, 0.01, seed=1)[1]) == 1  # at least one row held out


def test_the_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    order = datasets.epoch_order(seed=3, epoch=5, rows=50)
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(order, datasets.epoch_order(3, 5, 50))
    assert not np.array_equal(order, datasets.epoch_order(3, 6, 50))
    assert not np.array_equal(order, datasets.epoch_order(4, 5, 50))
    np.testing.assert_array_equal(datasets.epoch_order(3, 5, 50, shuffle=False), np.arange(50))
