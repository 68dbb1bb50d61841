"""Child specifications: what to run and how the supervisor should treat it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Restart(StrEnum):
    """When a child is restarted after it exits (OTP semantics)."""

    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit (exit code != 0)
    TEMPORARY = "temporary"  # never restarted

    def should_restart(self, exitcode: int | None) -> bool:
        """Whether a child with this restart type that exited with `exitcode` is started again."""
        if self is Restart.PERMANENT:
            return True
        if self is Restart.TRANSIENT:
            return exitcode != 0
        return False


@dataclass(frozen=True)
class ChildSpec:
    """Everything the supervisor needs to start, restart and stop one child process.

    `target` must be picklable (a module-level function) because non-fork start methods send it to
    the child by reference.
    """

    id: str
    target: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    restart: str = "permanent"
    shutdown: float = 5.0
    significant: bool = False
    title: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"ChildSpec.id must be a non-empty string, got {self.id!r}")
        if not callable(self.target):
            raise ValueError(f"ChildSpec {self.id!r}: target must be callable, got {self.target!r}")
        valid = [r.value for r in Restart]
        if self.restart not in valid:
            raise ValueError(f"ChildSpec {self.id!r}: restart must be one of {valid}, got {self.restart!r}")
        if not isinstance(self.shutdown, int | float) or self.shutdown < 0:
            raise ValueError(f"ChildSpec {self.id!r}: shutdown must be a number >= 0, got {self.shutdown!r}")
        if self.significant and self.restart == Restart.PERMANENT:
            # Same rule as OTP: a permanent child is always restarted, so its exit could never
            # trigger auto_shutdown; accepting it would hide a configuration mistake.
            raise ValueError(
                f"ChildSpec {self.id!r}: a significant child must be 'transient' or 'temporary', "
                "not 'permanent' (a permanent child is always restarted, so it can never end the run)"
            )

    @property
    def restart_type(self) -> Restart:
        """`restart` as a `Restart` member."""
        return Restart(self.restart)
