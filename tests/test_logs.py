"""The per-process log: its lines are what the log tools parse, it rotates within its bound, and it
keeps every line whole when threads share it."""

import threading

import pytest

from exmachina.rundir.logs import DEBUG, INFO, OFF, WARNING, Log, close_log, open_log
from exmachina.tools import logview


def _records(path):
    files = [*logview.rotated(path), path]
    return [r for f in files for r in logview.records(f.read_bytes().splitlines(keepends=True), "n")]


def test_a_line_is_what_the_log_tools_parse(tmp_path):
    path = tmp_path / "hidden1.3.log"
    log = open_log("hidden1.3", path, "info", 1_000_000, 1)
    log.debug("not written at level info")
    log.info("wired: %d input synapses from %s", 2, "input.0, input.1")
    log.warning("plain text with a %s sign kept as it is")
    close_log(log)
    first, second = _records(path)
    assert (first.level, first.name, first.message) == (
        "INFO",
        "hidden1.3",
        "wired: 2 input synapses from input.0, input.1",
    )
    assert (second.level, second.message) == ("WARNING", "plain text with a %s sign kept as it is")
    assert first.stamp <= second.stamp
    assert first.time.microsecond == int(first.stamp[-6:])
    assert path.read_text().startswith(first.stamp + " INFO    hidden1.3  wired")


def test_levels_and_off(tmp_path):
    quiet = open_log("n", tmp_path / "off.log", "off", 1000, 1)
    quiet.error("nothing")
    close_log(quiet)
    assert not (tmp_path / "off.log").exists()  # level off: no file at all
    log = open_log("n", tmp_path / "w.log", "warning", 1000, 1)
    assert [log.isEnabledFor(level) for level in (DEBUG, INFO, WARNING)] == [False, False, True]
    assert not Log("n", None, DEBUG).isEnabledFor(OFF - 1)  # no path: logs nothing
    close_log(log)


def test_an_exception_is_logged_with_its_traceback(tmp_path):
    path = tmp_path / "n.log"
    log = open_log("n", path, "info", 100_000, 1)
    try:
        {}["missing"]
    except KeyError:
        log.exception("crashed on start")
    log.info("after")
    close_log(log)
    crash, after = _records(path)
    assert crash.level == "ERROR"
    assert crash.message.startswith("crashed on start\nTraceback (most recent call last):")
    assert crash.message.endswith("KeyError: 'missing'")
    assert after.message == "after"


def test_rotation_keeps_the_newest_lines_within_the_bound(tmp_path):
    path = tmp_path / "n.log"
    log = open_log("n", path, "info", 2_000, 3)
    for i in range(1, 401):
        log.info("line %d %s", i, "x" * 30)
    close_log(log)
    files = [*logview.rotated(path), path]
    assert [f.name for f in files] == ["n.log.3", "n.log.2", "n.log.1", "n.log"]
    assert all(f.stat().st_size <= 2_000 for f in files)
    numbers = [int(r.message.split()[1]) for r in _records(path)]
    assert numbers == list(range(numbers[0], 401))  # the newest, in order, none lost between files
    assert len(numbers) > 3 * 25


def test_a_reopened_log_appends_and_counts_what_is_there(tmp_path):
    path = tmp_path / "n.log"
    for run in range(2):
        log = open_log("n", path, "info", 300, 1)
        for i in range(4):
            log.info("run %d line %d %s", run, i, "y" * 20)
        close_log(log)
    assert path.stat().st_size <= 300
    assert [r.message[:14] for r in _records(path)][-1] == "run 1 line 3 y"


@pytest.mark.timeout(30)
def test_threads_sharing_a_log_never_split_a_line(tmp_path):
    path = tmp_path / "n.log"
    log = open_log("n", path, "info", 20_000, 50)

    def write(t: int) -> None:
        for i in range(300):
            log.info("thread %d line %d %s", t, i, "z" * 40)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    close_log(log)
    messages = [r.message for r in _records(path)]
    assert sorted(messages) == sorted(f"thread {t} line {i} {'z' * 40}" for t in range(4) for i in range(300))
