"""All weights and biases of a network: their initial draw and the model file format (`model.npz`).

Layout: `axons[l]` has shape (size of layer l, size of layer l+1): row i is the axon of neuron i of
layer l, one weight per outgoing synapse. `biases[l]` has one entry per neuron of layer l.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exmachina.config import Config


@dataclass
class Parameters:
    axons: list[np.ndarray]
    biases: list[np.ndarray]
    activations: list[str]
    learn_bias: list[bool]
    names: list[str]

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.biases]

    def copy(self) -> Parameters:
        return Parameters(
            [a.copy() for a in self.axons],
            [b.copy() for b in self.biases],
            list(self.activations),
            list(self.learn_bias),
            list(self.names),
        )

    def save(self, path: str | Path) -> None:
        """Atomic: a reader (the viewer, a resume) sees the old file or the new one, never half."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        arrays: dict[str, Any] = {f"axon_{i}": a for i, a in enumerate(self.axons)}
        arrays |= {f"bias_{i}": b for i, b in enumerate(self.biases)}
        arrays |= {
            "activations": np.array(self.activations),
            "learn_bias": np.array(self.learn_bias),
            "names": np.array(self.names),
        }
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:  # a full disk: the old file stays, and no .tmp is left
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Parameters:
        """Raises ValueError for a damaged file: every member of the zip carries a CRC32, so a
        flipped byte is refused, never read as a wrong weight."""
        try:
            with np.load(path) as z:
                layers = len(z["names"])
                return cls(
                    [z[f"axon_{i}"] for i in range(layers - 1)],
                    [z[f"bias_{i}"] for i in range(layers)],
                    [str(a) for a in z["activations"]],
                    [bool(b) for b in z["learn_bias"]],
                    [str(n) for n in z["names"]],
                )
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: damaged model file ({exc})") from None


def initial(config: Config) -> Parameters:
    """The seed's first draw: axons U(weight_init), biases U(bias_init of their layer)."""
    rng = np.random.default_rng(config.seed)
    sizes = config.layer_sizes
    lo, hi = config.network.weight_init
    axons = [rng.uniform(lo, hi, size=(sizes[i], sizes[i + 1])) for i in range(len(sizes) - 1)]
    biases = []
    for i, size in enumerate(sizes):
        lo, hi = config.bias_init(i)
        biases.append(rng.uniform(lo, hi, size=size))
    return of_config(config, axons, biases)


def of_config(config: Config, axons: list[np.ndarray], biases: list[np.ndarray]) -> Parameters:
    """Weights and biases, with the activations, bias switches and layer names the config gives."""
    layers = range(len(config.layer_sizes))
    return Parameters(
        axons,
        biases,
        [config.activation(i) for i in layers],
        [config.learns_bias(i) for i in layers],
        [layer.name for layer in config.network.layers],
    )
