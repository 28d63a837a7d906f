"""Apply a model to a System: H = H(0) + ΔH as a BlockSparse in the system's own layout."""

from __future__ import annotations

import numpy as np
import torch

from ..core.blocks import BlockSparse
from ..core.system import System
from .graph import build_graph, corrections_to_blocks
from .network import HamiltonianCorrection


def predict_correction(model: HamiltonianCorrection, system: System, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> BlockSparse:
    """ΔH (eV) on the stored blocks of the system's H(0)."""
    model.eval()
    g, idx = build_graph(system, model.layout, with_target=False, dtype=dtype, long_range=model.cfg.long_range)
    known = getattr(model, "known_elements", None)
    if known:  # an element the model never saw uses the "unknown" embedding, not an untrained row
        unseen = torch.tensor([el not in known for el in system.elements])
        g.z = torch.where(unseen, torch.zeros_like(g.z), g.z)
    with torch.no_grad():
        delta, spin = model.to(device=device, dtype=dtype)(g.to(device))
    del g
    ns = idx.n_stored  # the stored half, in the network's dtype: the entries are gathered, then widened
    d = delta[:ns].detach().cpu().numpy()
    sp = None if spin is None else spin[:ns].detach().cpu().numpy()
    del delta, spin
    return corrections_to_blocks(system, idx, model.layout, d, sp)


def predict_hamiltonian(model: HamiltonianCorrection, system: System, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> BlockSparse:
    """H = H(0) + ΔH (eV), same pattern and spin layout as H(0)."""
    h0 = system.matrices["H0"]
    delta = predict_correction(model, system, device, dtype)
    return h0.with_data(h0.data + delta.data.astype(h0.data.dtype))


__all__ = ["predict_correction", "predict_hamiltonian", "np"]
