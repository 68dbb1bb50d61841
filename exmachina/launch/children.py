"""The child specs of neuron processes, shared by every supervisor that starts neurons: the local
one of `exmachina learn` and `serve`, and a host agent's on each Ray node."""

from __future__ import annotations

from exmachina.model.topology import NeuronSpec
from exmachina.network import curve
from exmachina.network.coordinator import serve_neuron
from exmachina.network.neuron import serve
from exmachina.rundir.directory import Site
from supervisor import ChildSpec

# What a neuron supervisor's zygote imports (and warms up) before it forks the first neuron.
NEURON_PRELOAD = [
    "exmachina.network.neuron",
    "exmachina.network.coordinator",
    "psutil",
    "exmachina.network.rehearsal:rehearse",
]


def neuron_children(
    specs: list[NeuronSpec], site: Site, keys: dict[str, curve.Keypair] | None = None
) -> list[ChildSpec]:
    """One permanent child per neuron, each handed its own CURVE keypair (if any) and no other's.
    While the coordinator's tcp port is still to be bound (`tcp://host:*`), a neuron starts by
    reading the port it got from the run directory."""
    keys = keys or {}
    target = serve_neuron if site.coordinator.endswith(":*") else serve
    return [
        ChildSpec(
            id=s.id,
            target=target,
            args=(s, site, keys.get(s.id)),
            restart="permanent",
            shutdown=5.0,
            title=f"exmachina: neuron {s.id}",
        )
        for s in specs
    ]
