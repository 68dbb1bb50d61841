"""A small Erlang/OTP-style supervisor for OS processes.

Describe children with `ChildSpec`, hand them to a `Supervisor`, and call `run()`: children are started
in order, restarted according to their restart type and the supervisor's strategy and restart
intensity, and always shut down in reverse start order. Children are forked by a preloaded zygote
(see `supervisor.zygote`), which also ends them if the supervisor process dies (under other start
methods each child watches for that itself: `supervisor.lifeline`), so none are left orphaned.
"""

from .core import AUTO_SHUTDOWN, STRATEGIES, Event, Outcome, RestartIntensityExceeded, Supervisor
from .lifeline import watch_parent
from .process import ChildProcess
from .spec import ChildSpec, Restart
from .zygote import Zygote, ZygoteError

__all__ = [
    "AUTO_SHUTDOWN",
    "STRATEGIES",
    "ChildProcess",
    "ChildSpec",
    "Event",
    "Outcome",
    "Restart",
    "RestartIntensityExceeded",
    "Supervisor",
    "Zygote",
    "ZygoteError",
    "watch_parent",
]
