"""How much one bench invocation measures: the profiles (`--quick` and full) and the 256-8-10 modes."""

from __future__ import annotations

from dataclasses import dataclass

from exmachina.data import SEMEION_DATA

SEMEION = SEMEION_DATA  # the digits that ship with the package; --semeion names another copy

# How the pipelined accuracy row learns: each group of K in flight moves the weights once by its
# mean gradient, through Adam (`in_flight_step: once`); 256-8-10's online lr 2 stays as it is.
PIPELINED_TRAINING = {
    "in_flight_step": "once",
    "learning_rate": 0.04,
    "optimizer": {"name": "adam", "beta1": 0.5, "beta2": 0.8},
}


@dataclass(frozen=True)
class Profile:
    """How much of everything one invocation measures: `--quick` for a look, full for a report."""

    name: str
    transport_messages: int
    round_trips: int
    xor_samples: int
    semeion_samples: int  # online 256-8-10; 0 skips every 256-8-10 row
    modes: tuple[str, ...]  # of MODES, on 256-8-10
    batch_samples: int  # the batched modes (a multiple of 32)
    pipelined_samples: int  # the pipelined mode and the sweep over K
    k_sweep: tuple[int, ...]  # () skips the sweep
    startup_sizes: tuple[int, ...]
    core_samples_xor: int
    core_samples_semeion: int  # 0 skips 256-8-10 on 1 and 2 cores
    reference_min_s: float  # the reference repeats epochs for at least this long
    log_samples: int = 0  # XOR at log levels off, info and debug; 0 skips
    full_batch_epochs: int = 0  # the full-batch mode: epochs over every Semeion row, an update each
    bare_samples: int = 20  # the bare networks of the training shapes (256-8-10 only with semeion)
    accuracy_epochs: int = 0  # held-out accuracy after this many epochs, online and pipelined; 0 skips
    accuracy_k: int = 32  # the pipelined one: this many samples in flight
    accuracy_configs: tuple[str, ...] = ()  # shipped configs timed to held-out accuracy; () skips
    accuracy_timeout_s: float = 1800.0  # per process-network run of those


# Modes of training 256-8-10: (batch size, batches in flight). One per network run: each run starts and
# stops 276 processes, which is why --quick leaves out the last two.
SEMEION_ROWS = 1593
MODES = {
    "online": (1, 1),
    "batch 32": (32, 1),
    "in-flight 4": (1, 4),
    "batch 32 + in-flight 4": (32, 4),
    "full batch": (SEMEION_ROWS, 1),  # gradient descent on the whole data set: an update an epoch
}
QUICK = Profile(
    name="quick",
    transport_messages=100_000,
    round_trips=2_000,
    xor_samples=600,
    semeion_samples=20,
    modes=("online", "batch 32", "in-flight 4"),
    batch_samples=128,
    pipelined_samples=20,
    k_sweep=(),
    startup_sizes=(100,),
    core_samples_xor=200,
    core_samples_semeion=0,
    reference_min_s=0.2,
)
FULL = Profile(
    name="full",
    transport_messages=500_000,
    round_trips=20_000,
    xor_samples=3_000,
    semeion_samples=300,
    modes=tuple(MODES),
    batch_samples=640,
    full_batch_epochs=12,
    pipelined_samples=150,
    k_sweep=(1, 2, 4, 8, 32),
    startup_sizes=(100, 500, 1000),
    core_samples_xor=1_500,
    core_samples_semeion=80,
    reference_min_s=1.0,
    log_samples=2_000,
    bare_samples=150,
    accuracy_epochs=3,
    accuracy_configs=("semeion-original.yaml", "semeion.yaml"),
)
