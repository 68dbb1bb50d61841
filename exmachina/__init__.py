"""exmachina: neural networks in which every neuron is its own operating-system process.

    import exmachina
    run = exmachina.learn("configs/xor.yaml", **{"training.epochs": 500})
    exmachina.load(run.path).predict([[0, 1], [1, 1]])

The API (exmachina/api.py) is imported on first use: every neuron process imports this package, and
none of them needs it.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("learn", "start", "resume", "load", "Run", "Training", "Model", "LearnError", "ConfigError")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from exmachina import api

        return getattr(api, name)
    raise AttributeError(f"module 'exmachina' has no attribute {name!r}")
