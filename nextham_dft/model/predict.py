"""Apply a model to a System: H = H(0) + ΔH as a BlockSparse in the system's own layout."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..core.blocks import BlockSparse, ab_to_spinor
from ..core.potential import potential_matrix
from ..core.system import System
from .density_net import is_density_model
from .ensemble import members_of
from .graph import build_graph, corrections_to_blocks, graph_options


#: atoms above which a local-potential model's ΔV matrix is integrated once per network (core.potential_matrix,
#: averaged over 2 anchored grids: symmetric to the quadrature's accuracy) instead of contracting the graph's
#: (edge, atom) integrals (exactly symmetric; memory grows as edges × atoms)
POTENTIAL_PAIRS_MAX_ATOMS = 8


def prediction_graph(model: nn.Module, system: System, dtype: torch.dtype = torch.float32):
    """(graph, edge index, deferred): the graph a model predicts on, elements it never saw mapped to the
    "unknown" embedding (unless it embeds elements from their descriptors); ``deferred`` True when a
    local-potential model's ΔV matrix is integrated after each network (cells above
    ``POTENTIAL_PAIRS_MAX_ATOMS`` atoms, see :func:`with_potential_matrices`)."""
    opts = graph_options(model.cfg)
    deferred = model.cfg.local_potential is not None and system.n_atoms > POTENTIAL_PAIRS_MAX_ATOMS
    if deferred:
        opts["potential"] = None
    g, idx = build_graph(system, model.layout, with_target=False, dtype=dtype, **opts)
    g.potential_deferred = deferred
    known = getattr(model, "known_elements", None)
    if known and not model.cfg.element_descriptors:
        # an element the model never saw uses the "unknown" embedding, not an untrained row (a descriptor
        # embedding instead embeds it from its own periodic-table properties)
        unseen = torch.tensor([el not in known for el in system.elements])
        g.z = torch.where(unseen, torch.zeros_like(g.z), g.z)
    return g, idx, deferred


def member_correction(model: nn.Module, system: System, idx, delta: torch.Tensor,
                      spin: torch.Tensor | None) -> BlockSparse:
    """One network's ΔH (eV) on H(0)'s stored blocks from its outputs on the prediction graph (without
    ΔV's matrix when the graph deferred it: :func:`with_potential_matrices`)."""
    ns = idx.n_stored  # the stored half, in the network's dtype: the entries are gathered, then widened
    d = delta[:ns].detach().cpu().numpy()
    sp = None if spin is None else spin[:ns].detach().cpu().numpy()
    return corrections_to_blocks(system, idx, model.layout, d, sp)


def with_potential_matrices(model: nn.Module, system: System, parts: list[BlockSparse],
                            coeffs: list[np.ndarray]) -> list[BlockSparse]:
    """Each network's ΔH plus the matrix of its ΔV (coefficients (atoms, widths) eV, kept by a network
    on a deferred graph), all integrated in one quadrature (``core.potential.potential_matrix``)."""
    c = np.stack([np.asarray(x, dtype=np.float64) for x in coeffs])
    dv = potential_matrix(system, model.cfg.local_potential, c, parts[0], spacing=model.cfg.potential_spacing)
    out = []
    for k, part in enumerate(parts):
        col = dv[:, k]
        out.append(part.with_data(part.data + (ab_to_spinor(col, np.zeros(col.shape + (3,)))
                                               if part.spin == "spinor" else col)))
    return out


def iter_member_corrections(model: nn.Module, system: System, device: str = "cpu",
                            dtype: torch.dtype = torch.float32) -> Iterator[BlockSparse]:
    """ΔH (eV) on the stored blocks of the system's H(0), one per network of the model (one for a
    single network, M for an ensemble), yielded one at a time. The graph is built once; on a deferred
    graph the networks' ΔV matrices are integrated together after the last network has run."""
    model.eval()
    g, idx, deferred = prediction_graph(model, system, dtype)
    g = g.to(device)
    nets = members_of(model)
    parts, coeffs = [], []
    for k, net in enumerate(nets):
        with torch.no_grad():
            delta, spin = net.to(device=device, dtype=dtype)(g)
        if k == len(nets) - 1:
            del g  # the last network has run: the graph is not needed to assemble the blocks
        out = member_correction(model, system, idx, delta, spin)
        del delta, spin
        if not deferred:
            yield out
            continue
        parts.append(out)
        coeffs.append(net.deferred_potential.cpu().numpy())
    if deferred:
        yield from with_potential_matrices(model, system, parts, coeffs)


def predict_member_corrections(model: nn.Module, system: System, device: str = "cpu",
                               dtype: torch.dtype = torch.float32) -> list[BlockSparse]:
    """Every network's ΔH (eV) at once (M copies in memory; ``predict_correction_and_spread`` holds one)."""
    return list(iter_member_corrections(model, system, device, dtype))


def _squared_modulus(x: np.ndarray) -> np.ndarray:
    return x.real**2 + x.imag**2 if np.iscomplexobj(x) else x**2


class CorrectionMean:
    """Running mean of the members' corrections on one pattern, and their spread: holds the sum, the
    sum of squared moduli (from the second member on: a single network costs no extra array) and
    nothing per member."""

    def __init__(self) -> None:
        self.n = 0
        self._first: BlockSparse | None = None
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None

    def add(self, part: BlockSparse) -> None:
        if self._first is None:
            self._first, self._sum = part, part.data  # the part's own array becomes the sum
        else:
            if self._sumsq is None:  # the first part's, before anything is added to the sum
                self._sumsq = _squared_modulus(self._sum)
            self._sum += part.data
            self._sumsq += _squared_modulus(part.data)
        self.n += 1

    def mean(self) -> BlockSparse:
        """eV: the average correction."""
        if self._first is None:
            raise ValueError("no correction added")
        return self._first if self.n == 1 else self._first.with_data(self._sum / self.n)

    def spread(self) -> dict[str, float]:
        """meV: the members' standard deviation per stored entry (complex entries: of the modulus of
        the deviation), its mean and largest value over the entries; empty for a single network."""
        if self.n < 2:
            return {}
        var = self._sumsq / self.n - _squared_modulus(self._sum / self.n)
        std = np.sqrt(np.clip(var, 0.0, None, out=var), out=var)
        return {"members": self.n, "spread_mean_mev": 1e3 * float(std.mean()),
                "spread_max_mev": 1e3 * float(std.max(initial=0.0))}


def predict_correction_and_spread(model: nn.Module, system: System, device: str = "cpu",
                                  dtype: torch.dtype = torch.float32) -> tuple[BlockSparse, dict[str, float]]:
    """ΔH (eV; an ensemble: its members' mean) and the members' spread (meV; empty for one network)."""
    acc = CorrectionMean()
    for part in iter_member_corrections(model, system, device, dtype):
        acc.add(part)
        del part
    return acc.mean(), acc.spread()


def member_spread(parts: list[BlockSparse]) -> dict[str, float]:
    """meV: the spread of corrections held at once (see ``CorrectionMean.spread``)."""
    acc = CorrectionMean()
    for p in parts:
        acc.add(p.with_data(p.data.copy()))
    return acc.spread()


def predict_correction(model: nn.Module, system: System, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> BlockSparse:
    """ΔH (eV) on the stored blocks of the system's H(0) (an ensemble: its members' mean)."""
    return predict_correction_and_spread(model, system, device, dtype)[0]


def hamiltonian_from(system: System, delta: BlockSparse) -> BlockSparse:
    """H = H(0) + ΔH (eV), same pattern and spin layout as H(0)."""
    h0 = system.matrices["H0"]
    return h0.with_data(h0.data + delta.data.astype(h0.data.dtype))


def predict_hamiltonian(model: nn.Module, system: System, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> BlockSparse:
    """H = H(0) + ΔH (eV), same pattern and spin layout as H(0). A density model gives H[ρ_atoms + Δρ]
    on H(0)'s and S's blocks instead (``density_predict``; float64 whatever ``dtype``)."""
    if is_density_model(model):
        from .density_predict import predict_density_hamiltonian

        return predict_density_hamiltonian(model, system, device)[0]
    return hamiltonian_from(system, predict_correction(model, system, device, dtype))
