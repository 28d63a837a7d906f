"""Apply a model to a System: H = H(0) + ΔH as a BlockSparse in the system's own layout."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.blocks import BlockSparse
from ..core.system import System
from .ensemble import members_of
from .graph import build_graph, corrections_to_blocks


def predict_member_corrections(model: nn.Module, system: System, device: str = "cpu",
                               dtype: torch.dtype = torch.float32) -> list[BlockSparse]:
    """ΔH (eV) on the stored blocks of the system's H(0), one per network of the model (one for a
    single network, M for an ensemble). The graph is built once; the networks run one after another."""
    model.eval()
    g, idx = build_graph(system, model.layout, with_target=False, dtype=dtype, long_range=model.cfg.long_range)
    known = getattr(model, "known_elements", None)
    if known:  # an element the model never saw uses the "unknown" embedding, not an untrained row
        unseen = torch.tensor([el not in known for el in system.elements])
        g.z = torch.where(unseen, torch.zeros_like(g.z), g.z)
    g = g.to(device)
    ns = idx.n_stored  # the stored half, in the network's dtype: the entries are gathered, then widened
    out = []
    for net in members_of(model):
        with torch.no_grad():
            delta, spin = net.to(device=device, dtype=dtype)(g)
        d = delta[:ns].detach().cpu().numpy()
        sp = None if spin is None else spin[:ns].detach().cpu().numpy()
        del delta, spin
        out.append(corrections_to_blocks(system, idx, model.layout, d, sp))
    return out


def mean_correction(parts: list[BlockSparse]) -> BlockSparse:
    """The average of corrections on one pattern (the ensemble's ΔH)."""
    if len(parts) == 1:
        return parts[0]
    return parts[0].with_data(sum(p.data for p in parts) / len(parts))


def member_spread(parts: list[BlockSparse]) -> dict[str, float]:
    """meV: the members' standard deviation per stored entry (complex entries: of the modulus of the
    deviation), its mean and largest value over the entries; empty for a single network."""
    if len(parts) < 2:
        return {}
    mean = mean_correction(parts).data
    var = sum(np.abs(p.data - mean) ** 2 for p in parts) / len(parts)
    std = np.sqrt(var)
    return {"members": len(parts), "spread_mean_mev": 1e3 * float(std.mean()),
            "spread_max_mev": 1e3 * float(std.max(initial=0.0))}


def predict_correction(model: nn.Module, system: System, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> BlockSparse:
    """ΔH (eV) on the stored blocks of the system's H(0) (an ensemble: its members' mean)."""
    return mean_correction(predict_member_corrections(model, system, device, dtype))


def hamiltonian_from(system: System, delta: BlockSparse) -> BlockSparse:
    """H = H(0) + ΔH (eV), same pattern and spin layout as H(0)."""
    h0 = system.matrices["H0"]
    return h0.with_data(h0.data + delta.data.astype(h0.data.dtype))


def predict_hamiltonian(model: nn.Module, system: System, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> BlockSparse:
    """H = H(0) + ΔH (eV), same pattern and spin layout as H(0)."""
    return hamiltonian_from(system, predict_correction(model, system, device, dtype))
