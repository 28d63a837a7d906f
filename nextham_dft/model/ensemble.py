"""Several networks of one architecture whose corrections are averaged: ΔH = (1/M) Σ_m ΔH_m.

Each member is E(3)-equivariant, hermitian and time-reversal symmetric by construction, and all of
these are linear conditions on ΔH, so their average keeps every one of them exactly. The members
share the architecture (``ModelConfig``) and therefore the graph a run is turned into; the graph is
built once and each member runs on it in turn (prediction costs M forward passes). The spread of
the members' corrections is a measure of how much the prediction depends on the training run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import NexthamError
from .config import to_dict
from .graph import Graph
from .network import HamiltonianCorrection


class EnsembleError(NexthamError):
    """Members that cannot be averaged (different architectures, none at all)."""


class ModelEnsemble(nn.Module):
    """The mean correction of ``members`` (same ``ModelConfig``); used wherever a single
    ``HamiltonianCorrection`` is (``cfg``, ``layout`` and ``forward(graph)`` are the same)."""

    def __init__(self, members: Sequence[HamiltonianCorrection]) -> None:
        super().__init__()
        if not members:
            raise EnsembleError("an ensemble needs at least one member")
        first = to_dict(members[0].cfg)
        for k, m in enumerate(members[1:], start=1):
            if to_dict(m.cfg) != first:
                diff = sorted(key for key in first if first[key] != to_dict(m.cfg).get(key))
                raise EnsembleError(f"ensemble member {k} has another architecture than member 0 ({', '.join(diff)})")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg
        self.layout = members[0].layout

    def forward(self, g: Graph) -> tuple[torch.Tensor, torch.Tensor | None]:
        delta = spin = None
        for m in self.members:  # a running sum: one member's output held at a time besides the total
            d, s = m(g)
            delta = d if delta is None else delta + d
            if s is not None:
                spin = s if spin is None else spin + s
        n = len(self.members)
        return delta / n, (None if spin is None else spin / n)


def members_of(model: nn.Module) -> list[HamiltonianCorrection]:
    """The networks of a model: its members for an ensemble, else the model itself."""
    return list(model.members) if isinstance(model, ModelEnsemble) else [model]  # type: ignore[list-item]
