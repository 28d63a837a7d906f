"""Element embeddings: a free row per element, or a smooth function of periodic-table descriptors.

A lookup table learns each element only from the crystals that hold it, so an element seen in one
environment (Ti only as a metal, say) carries that environment's corrections into every other one.
With descriptors the embedding is an MLP of the element's place in the periodic table and its atomic
properties, so chemically close elements (Ti and Zr, Sr and Ba, Sn and Ge) start close, and an element
absent from training gets an embedding from its own properties rather than the shared "unknown" row.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

#: elements 1..118; row 0 is the "unknown" element (hidden by element dropout, or not an element)
N_ELEMENTS = 119

#: the descriptor columns, in order (z-scored over the elements that have a value; missing: 0)
DESCRIPTORS = ("row", "group", "electronegativity", "atomic_radius", "ionization_energy", "electron_affinity",
               "block_s", "block_p", "block_d", "block_f", "unknown")


def _raw_descriptors(z: int) -> list[float]:
    """Unscaled descriptors of element ``z`` (Pauling χ, radius Å, energies eV); NaN where pymatgen has none."""
    from pymatgen.core.periodic_table import Element

    el = Element.from_Z(z)

    def value(get) -> float:
        try:
            v = get()
            return float(v) if v is not None else math.nan
        except (TypeError, ValueError, IndexError, AttributeError, KeyError):
            return math.nan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [value(lambda: el.row), value(lambda: el.group), value(lambda: el.X),
                value(lambda: el.atomic_radius), value(lambda: el.ionization_energies[0]),
                value(lambda: el.electron_affinity)] + [float(el.block == b) for b in "spdf"] + [0.0]


def descriptor_table() -> torch.Tensor:
    """(N_ELEMENTS, len(DESCRIPTORS)) float32: each continuous column z-scored over the elements with a
    value (missing values 0, the column mean); row 0 (unknown element) is 0 but for its ``unknown`` flag."""
    raw = torch.tensor([[math.nan] * len(DESCRIPTORS)] + [_raw_descriptors(z) for z in range(1, N_ELEMENTS)],
                       dtype=torch.float64)
    for c in range(6):  # the continuous columns
        col = raw[1:, c]
        ok = ~torch.isnan(col)
        mean, std = col[ok].mean(), col[ok].std()
        raw[1:, c] = torch.where(ok, (col - mean) / std, torch.zeros_like(col))
    raw[0] = 0.0
    raw[0, DESCRIPTORS.index("unknown")] = 1.0
    return raw.to(torch.float32)


class DescriptorEmbedding(nn.Module):
    """embed(z) = MLP(descriptors[z]): (n,) atomic numbers (0: unknown) → (n, dim). The table is a
    persistent buffer, so a saved model keeps the descriptors it was trained with."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("table", descriptor_table())
        n = self.table.shape[1]
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.table[z])


def element_embedding(dim: int, descriptors: bool, hidden: int = 32) -> nn.Module:
    """The embedding module of a network: a free row per element, or ``DescriptorEmbedding``."""
    return DescriptorEmbedding(dim, hidden) if descriptors else nn.Embedding(N_ELEMENTS, dim)


def atomic_numbers(elements) -> torch.Tensor:
    """(atoms,) long: Z of each element symbol, 0 (the "unknown" row) for anything else."""
    from pymatgen.core.periodic_table import Element

    out = []
    for el in elements:
        try:
            z = Element(str(el)).Z
        except ValueError:
            z = 0
        out.append(z if 0 < z < N_ELEMENTS else 0)
    return torch.tensor(out, dtype=torch.long)
