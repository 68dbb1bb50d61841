"""What the bench's figures were measured on."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import msgpack
import numpy as np
import psutil
import zmq


def machine_info() -> dict:
    """What the figures were measured on, and how busy it was (the machine may be shared)."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
        "sixteen_core_machine": "this is one" if usable >= 16 else f"not this one ({usable} usable cores)",
    }
