"""The supervisor's decisions that need no process: restart types, child spec and supervisor
validation, the restart intensity window and when auto_shutdown fires.

A `Supervisor` starts nothing until `start` or `run`, so one can be built and its decisions asked
directly. The intensity window reads `time.monotonic` in `supervisor.core`; a clock set by the test
stands in for it, so a window of seconds is checked without waiting. What a strategy does on an exit
(one_for_one, one_for_all) is one step with starting and stopping processes, and stays with the
process tests in test_supervisor.py.
"""

from __future__ import annotations

import time

import pytest

import supervisor.core
from supervisor import (
    AUTO_SHUTDOWN,
    STRATEGIES,
    ChildSpec,
    Event,
    Outcome,
    Restart,
    RestartIntensityExceeded,
    Supervisor,
)

pytestmark = pytest.mark.unit


def work() -> None:
    """A child target; never called here."""


class Clock:
    """`supervisor.core`'s view of time: monotonic() is whatever the test set; time() is real."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(supervisor.core, "time", fake)
    return fake


def spec(id: str = "a", **options: object) -> ChildSpec:
    return ChildSpec(id=id, target=work, **options)


@pytest.mark.parametrize(
    ("restart", "exitcode", "again"),
    [
        ("permanent", 0, True),
        ("permanent", 1, True),
        ("permanent", -9, True),
        ("transient", 0, False),
        ("transient", 1, True),
        ("transient", -15, True),
        ("temporary", 0, False),
        ("temporary", 1, False),
    ],
)
def test_restart_types_decide_by_exit_code(restart, exitcode, again):
    assert Restart(restart).should_restart(exitcode) is again
    assert spec(restart=restart).restart_type is Restart(restart)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"id": ""}, "ChildSpec.id must be a non-empty string, got ''"),
        ({"id": 3}, "ChildSpec.id must be a non-empty string, got 3"),
        ({"target": "work"}, "ChildSpec 'a': target must be callable, got 'work'"),
        (
            {"restart": "sometimes"},
            "ChildSpec 'a': restart must be one of ['permanent', 'transient', 'temporary'], got 'sometimes'",
        ),
        ({"shutdown": -1}, "ChildSpec 'a': shutdown must be a number >= 0, got -1"),
        ({"shutdown": "5"}, "ChildSpec 'a': shutdown must be a number >= 0, got '5'"),
        (
            {"significant": True},
            "ChildSpec 'a': a significant child must be 'transient' or 'temporary', not 'permanent' "
            "(a permanent child is always restarted, so it can never end the run)",
        ),
    ],
)
def test_a_bad_child_spec_is_refused_with_its_reason(options, problem):
    with pytest.raises(ValueError) as caught:
        ChildSpec(**{"id": "a", "target": work, **options})
    assert str(caught.value) == problem


def test_significant_children_may_be_transient_or_temporary():
    for restart in ("transient", "temporary"):
        assert spec(restart=restart, significant=True).significant


@pytest.mark.parametrize(
    ("children", "options", "error", "problem"),
    [
        ([spec("a"), spec("a")], {}, ValueError, "duplicate child ids: ['a']"),
        (["a"], {}, TypeError, "children must be ChildSpec instances, got 'a'"),
        (
            [spec()],
            {"strategy": "rest_for_one"},
            ValueError,
            "strategy must be one of ['one_for_one', 'one_for_all'], got 'rest_for_one'",
        ),
        (
            [spec()],
            {"auto_shutdown": "always"},
            ValueError,
            "auto_shutdown must be one of ['never', 'any_significant', 'all_significant'], got 'always'",
        ),
        ([spec()], {"intensity": -1}, ValueError, "intensity must be >= 0, got -1"),
        ([spec()], {"period": 0}, ValueError, "period must be > 0, got 0"),
    ],
)
def test_a_bad_supervisor_is_refused_before_anything_starts(children, options, error, problem):
    with pytest.raises(error) as caught:
        Supervisor(children, **options)
    assert str(caught.value) == problem


def test_the_strategies_and_auto_shutdown_modes_offered():
    assert STRATEGIES == ("one_for_one", "one_for_all")  # rest_for_one is not offered
    assert AUTO_SHUTDOWN == ("never", "any_significant", "all_significant")
    idle = Supervisor([spec("a"), spec("b")])
    assert [c["id"] for c in idle.which_children()] == ["a", "b"]
    assert idle.pids == {"a": None, "b": None}  # built, not started: no process yet


def test_restarts_within_the_intensity_are_allowed_and_counted(clock):
    events: list[Event] = []
    sup = Supervisor([spec()], intensity=3, period=5.0, on_event=events.append)
    for step in range(3):
        clock.now += 1.0
        assert sup._allow_restart("a"), f"restart {step + 1} of 3"
    assert sup._restarts == 3 and events == []
    clock.now += 1.0
    assert not sup._allow_restart("a")  # a fourth within 5 s
    assert [(e.kind, e.child) for e in events] == [("intensity_exceeded", "a")]
    assert sup._restarts == 3


def test_restarts_older_than_the_period_fall_out_of_the_window(clock):
    sup = Supervisor([spec()], intensity=2, period=5.0)
    assert sup._allow_restart("a")  # t = 0
    clock.now += 3.0
    assert sup._allow_restart("a")  # t = 3
    clock.now += 2.5
    assert sup._allow_restart("a")  # t = 5.5: the one at 0 is more than 5 s old
    clock.now += 0.1
    assert not sup._allow_restart("a")  # t = 5.6: 3, 5.5 and now are within 5 s


def test_a_restart_exactly_one_period_old_still_counts(clock):
    sup = Supervisor([spec()], intensity=1, period=5.0)
    assert sup._allow_restart("a")
    clock.now += 5.0
    assert not sup._allow_restart("a")
    later = Supervisor([spec()], intensity=1, period=5.0)
    assert later._allow_restart("a")
    clock.now += 5.001
    assert later._allow_restart("a")


def test_intensity_zero_allows_no_restart_at_all(clock):
    assert not Supervisor([spec()], intensity=0)._allow_restart("a")


def test_restarts_of_different_children_share_one_window(clock):
    sup = Supervisor([spec("a"), spec("b")], intensity=1, period=10.0)
    assert sup._allow_restart("a")
    clock.now += 1.0
    assert not sup._allow_restart("b")


def _ended(sup: Supervisor, *ids: str) -> list:
    """Mark children as ended for good, as the supervising loop does; return them."""
    sup._finished.update(ids)
    return [sup._children[i] for i in ids]


def significant(id: str) -> ChildSpec:
    return spec(id, restart="transient", significant=True)


@pytest.mark.parametrize("mode", AUTO_SHUTDOWN)
def test_an_insignificant_exit_never_ends_the_run(mode):
    sup = Supervisor([significant("s"), spec("w", restart="temporary")], auto_shutdown=mode)
    assert not sup._significant_exit(_ended(sup, "w"))


def test_any_significant_ends_the_run_at_the_first_significant_exit():
    sup = Supervisor([significant("s"), significant("t"), spec("w")], auto_shutdown="any_significant")
    assert sup._significant_exit(_ended(sup, "s"))


def test_all_significant_waits_for_every_significant_child():
    sup = Supervisor([significant("s"), significant("t"), spec("w")], auto_shutdown="all_significant")
    assert not sup._significant_exit(_ended(sup, "s"))
    assert sup._significant_exit(_ended(sup, "t"))


def test_never_ignores_significant_exits():
    sup = Supervisor([significant("s")], auto_shutdown="never")
    assert not sup._significant_exit(_ended(sup, "s"))


def test_an_outcome_raises_only_when_the_supervisor_gave_up():
    for reason in ("significant_exit", "stop_requested", "all_exited"):
        outcome = Outcome(reason, {"a": 0}, 0)
        assert outcome.check() is outcome
    with pytest.raises(RestartIntensityExceeded, match=r"restart intensity exceeded; exit codes: \{'a': 1\}"):
        Outcome("intensity_exceeded", {"a": 1}, 3).check()
