"""System → graph tensors for the model, and predicted corrections → BlockSparse.

Edges are all directed atom-pair blocks (i, j, R) of H(0) (both halves, on-site
blocks once). Blocks are padded into the layout's slots. Keys, each with its shape:
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.blocks import BlockSparse, ab_to_spinor, is_onsite, spinor_to_ab
from ..core.ewald import neutral_potential_operator
from ..core.potential import potential_integrals
from ..core.system import System
from .elements import atomic_numbers
from .irreps import BasisLayout

#: real-space block fields
# positions      [n_atoms, 3] Å
# edge_src/dst   [n_edges] atom i (row) / atom j (column, shifted by R)
# edge_vec       [n_edges, 3] Å, r_j + R·A - r_i
# h0, s          [n_edges, n, n] padded blocks, eV / 1
# h0_spin        [n_edges, n, n, 3] Cartesian spin part b of H(0) (SOC), eV
# mask           [n_edges, n, n] 1 where both orbitals exist
# mirror         [n_edges] index of the (j, i, -R) edge
# ewald          [n_atoms, n_atoms] eV/e², per structure (block-diagonal in a batch): the potential
#                at each atom of neutralised per-atom charges (core.ewald); only for long-range models
# dm             [n_edges, n, n] padded blocks of the zeroth-step density matrix (electrons; spin summed):
#                the occupied states of H(0) itself (zeroth_step_density); only for density-feature models


@dataclass
class Graph:
    """Tensors of one structure (or a batch: concatenated, atom indices offset)."""

    z: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_vec: torch.Tensor
    h0: torch.Tensor
    s: torch.Tensor
    h0_spin: torch.Tensor | None
    mask: torch.Tensor
    mirror: torch.Tensor
    onsite: torch.Tensor
    spinor: bool
    target: torch.Tensor | None = None  # [n_edges, n, n] ΔH spin-free part, eV
    target_spin: torch.Tensor | None = None  # [n_edges, n, n, 3]
    n_atoms: int = 0
    ewald: torch.Tensor | None = None
    dm: torch.Tensor | None = None
    #: local-potential integrals (models with ``local_potential``): for every (edge, atom) pair p,
    #: vp[p, m] = ⟨φ_i| g_m centred on atom vp_atom[p] and its images |φ_j⟩ of edge vp_edge[p], padded (n, n)
    vp: torch.Tensor | None = None
    vp_edge: torch.Tensor | None = None
    vp_atom: torch.Tensor | None = None
    #: True: a local-potential network leaves ΔV's matrix out and keeps its coefficients (big cells,
    #: where the (edge, atom) integrals would not fit; model.predict integrates ΔV itself)
    potential_deferred: bool = False

    def to(self, device) -> Graph:
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Graph(**kw)

    #: fields with one row per edge
    EDGE_FIELDS = ("edge_src", "edge_dst", "edge_vec", "h0", "s", "h0_spin", "mask", "onsite", "target", "target_spin",
                   "dm")

    def subgraph(self, keep: torch.Tensor) -> Graph:
        """The same atoms with the edges where ``keep`` (bool [n_edges]) only; ``keep`` must be closed
        under the mirror (an edge and its (j, i, −R) partner both kept or both dropped)."""
        new = torch.cumsum(keep.long(), 0) - 1
        kw = {k: (v[keep] if k in self.EDGE_FIELDS and v is not None else v) for k, v in self.__dict__.items()}
        kw["mirror"] = new[self.mirror[keep]]
        if self.vp is not None:
            kp = keep[self.vp_edge]
            kw.update(vp=self.vp[kp], vp_edge=new[self.vp_edge[kp]], vp_atom=self.vp_atom[kp])
        return Graph(**kw)


@dataclass
class EdgeIndex:
    """Directed edges of a System's H(0) pattern and how they map back to its stored half."""

    ei: np.ndarray
    ej: np.ndarray
    R: np.ndarray
    offsets: np.ndarray
    mirror: np.ndarray
    n_stored: int


def edge_index(h0: BlockSparse) -> EdgeIndex:
    ei, ej, R, off, _ = h0.full_edges()
    n = h0.n_edges
    mir_src = np.nonzero(~h0.onsite_blocks())[0]
    mirror = np.arange(len(ei))
    mirror[mir_src] = n + np.arange(len(mir_src))
    mirror[n + np.arange(len(mir_src))] = mir_src
    return EdgeIndex(ei, ej, R, off, mirror, n)


def _padded(system: System, m: BlockSparse, idx: EdgeIndex, layout: BasisLayout, pos: list[np.ndarray],
            dtype=np.float32):
    """Padded blocks of m on the directed edges idx (missing blocks are zero), in ``dtype``.

    Spinless m: (E, n, n). Spinor m: the pair (a (E, n, n), b (E, n, n, 3)) of M = a ⊗ 1 + i b·σ,
    taken from the compact entries before padding. Only the stored half is scattered; the mirror
    edges are its transposes (a(−R)ᵀ = a(R), b(−R)ᵀ = −b(R)), so no adjoint of the whole matrix
    is ever built (this was the peak of memory and time for big cells).
    """
    ns = idx.n_stored
    m = m.aligned_to_edges(idx.ei[:ns], idx.ej[:ns], idx.R[:ns])
    pad = _padder(system, m, idx, layout, pos, dtype)
    if m.spin == "spinor":
        a, b = spinor_to_ab(m.data)
        return pad(a, 1.0), pad(b, -1.0)
    if m.spin != "none":
        raise ValueError("collinear matrices are not supported by the model")
    return pad(m.data.real if np.iscomplexobj(m.data) else m.data, 1.0)


def _padder(system: System, m: BlockSparse, idx: EdgeIndex, layout: BasisLayout, pos: list[np.ndarray], dtype):
    """pad(values (nnz, ...), sign) -> (E, n, n, ...): entries laid out as m's stored half (m on the stored
    edges of idx) scattered into the padded blocks of every directed edge, mirror edges transposed
    (times ``sign``)."""
    ns = idx.n_stored
    n = layout.size
    edge, lr, lc = _entry_index(m.offsets, system.norb[idx.ei[:ns]], system.norb[idx.ej[:ns]])
    pi = np.concatenate([pos[k] for k in system.kinds])
    aoff = np.concatenate([[0], np.cumsum(system.norb)])
    r = pi[aoff[idx.ei[edge]] + lr]
    c = pi[aoff[idx.ej[edge]] + lc]
    mir_src = idx.mirror[ns:]  # stored edge of each appended mirror edge

    flat = (edge * n + r) * n + c  # one flat index: far faster than three index arrays

    def pad(values: np.ndarray, sign: float) -> np.ndarray:
        out = np.zeros((len(idx.ei), n, n) + values.shape[1:], dtype=dtype)
        out.reshape((-1,) + values.shape[1:])[flat] = values
        mirrored = np.swapaxes(out[mir_src], 1, 2)
        if sign < 0:
            np.negative(mirrored, out=out[ns:])
        else:
            out[ns:] = mirrored
        return out

    return pad


def _entry_index(off: np.ndarray, ni: np.ndarray, nj: np.ndarray):
    sizes = np.diff(off)
    edge = np.repeat(np.arange(len(sizes)), sizes)
    local = np.arange(len(edge)) - off[edge]
    return edge, local // nj[edge], local % nj[edge]


def zeroth_step_density(system: System) -> BlockSparse:
    """The density matrix of H(0)'s own occupied states (electrons, spins summed; H(0)'s pattern).

    DM(R) on the run's full k-mesh with the run's smearing and electron count (``core.density``): what
    the first SCF iteration computes as its output density before any mixing. Its difference from the
    superposed atomic densities that built H(0) is the charge the SCF moves (a matrix function of H(0)
    and S, so it rotates with their blocks). Spinor runs: the charge part Σ_s DM_ss (real; the spin
    part of a non-magnetic crystal's DM is not a feature)."""
    system.require_nelec("no pseudopotential, nelec or log found; a density-feature model needs it")
    dm, _ef = system.density_matrix("H0", pattern=system.matrices["H0"])
    data = 2.0 * spinor_to_ab(dm.data)[0] if dm.spin == "spinor" else dm.data.real  # Σ_s DM_ss = 2a
    return dm.with_data(data, "none")


def graph_options(cfg) -> dict:
    """The ``build_graph`` keywords a model of configuration ``cfg`` (ModelConfig) needs."""
    return {"long_range": cfg.long_range, "density": cfg.density_features, "potential": cfg.local_potential,
            "spacing": cfg.potential_spacing}


def _potential_pairs(system: System, idx: EdgeIndex, layout: BasisLayout, pos: list[np.ndarray], sigmas,
                     spacing: float, npdt,
                     values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vp (P, m, n, n), edge (P,), atom (P,)): the local-potential integrals of every directed edge and
    every atom of the cell whose Gaussians reach the edge's orbitals (pairs of zero integrals dropped).
    ``values``: the integrals on H(0)'s stored entries when already at hand (a cache)."""
    h0 = system.matrices["H0"]
    v = potential_integrals(system, sigmas, h0, spacing=spacing) if values is None else values  # (nnz, atoms, m)
    n_at, nm = v.shape[1], v.shape[2]
    pad = _padder(system, h0, idx, layout, pos, npdt)
    per = pad(v.reshape(len(v), n_at * nm), 1.0)  # (E, n, n, atoms·m): every column in one scatter
    E, n = per.shape[0], layout.size
    flat = np.ascontiguousarray(per.reshape(E, n, n, n_at, nm).transpose(0, 3, 4, 1, 2)).reshape(E * n_at, nm, n, n)
    keep = np.nonzero(np.abs(flat).reshape(E * n_at, -1).max(axis=1) > 0)[0]
    return flat[keep], keep // n_at, keep % n_at


def build_graph(system: System, layout: BasisLayout, with_target: bool = True, dtype=torch.float32,
                long_range: bool = False, density: bool = False, potential=None,
                spacing: float = 0.2, potential_values: np.ndarray | None = None) -> tuple[Graph, EdgeIndex]:
    """Graph tensors of a System that holds H0 and S (and H when with_target); with ``long_range``
    also the Ewald operator of its sites (models with ``long_range`` need it), with ``density`` the
    zeroth-step density matrix (models with ``density_features``), with ``potential`` (widths, Å) the
    local-potential integrals on a grid of step ``spacing`` (models with ``local_potential``;
    ``potential_values``: those integrals already computed, e.g. from ``model.cache``).
    ``graph_options(model.cfg)`` gives the keywords a model needs."""
    h0 = system.matrices["H0"]
    pos = [layout.positions(b) for b in system.bases]
    idx = edge_index(h0)
    n = layout.size
    npdt = np.float32 if dtype == torch.float32 else np.float64
    spinor = h0.spin == "spinor"
    h0_spin = None
    if spinor:
        h0p, h0_spin = _padded(system, h0, idx, layout, pos, npdt)
    else:
        h0p = _padded(system, h0, idx, layout, pos, npdt)
    sp = _padded(system, system.matrices["S"], idx, layout, pos, npdt)
    mask_orb = [np.zeros(n, bool) for _ in system.bases]
    for k, p in enumerate(pos):
        mask_orb[k][p] = True
    mk = np.stack([mask_orb[k] for k in system.kinds])
    mask = mk[idx.ei][:, :, None] & mk[idx.ej][:, None, :]
    vec = system.bond_vectors(idx.ei, idx.ej, idx.R)
    g = Graph(
        z=atomic_numbers(system.elements),
        edge_src=torch.as_tensor(idx.ei),
        edge_dst=torch.as_tensor(idx.ej),
        edge_vec=torch.as_tensor(vec, dtype=dtype),
        h0=torch.as_tensor(h0p, dtype=dtype),
        s=torch.as_tensor(sp, dtype=dtype),
        h0_spin=None if h0_spin is None else torch.as_tensor(h0_spin, dtype=dtype),
        mask=torch.as_tensor(mask, dtype=dtype),
        mirror=torch.as_tensor(idx.mirror),
        onsite=torch.as_tensor(is_onsite(idx.ei, idx.ej, idx.R)),
        spinor=spinor,
        n_atoms=system.n_atoms,
        ewald=(torch.as_tensor(neutral_potential_operator(system.lattice, system.positions), dtype=dtype)
               if long_range else None),
        dm=(torch.as_tensor(_padded(system, zeroth_step_density(system), idx, layout, pos, npdt), dtype=dtype)
            if density else None),
    )
    if potential is not None:
        vp, ve, va = _potential_pairs(system, idx, layout, pos, potential, spacing, npdt, potential_values)
        g.vp, g.vp_edge, g.vp_atom = torch.as_tensor(vp, dtype=dtype), torch.as_tensor(ve), torch.as_tensor(va)
    if with_target and "H" in system.matrices:
        if spinor:
            a, b = _padded(system, system.matrices["H"], idx, layout, pos, np.float64)
            g.target = torch.as_tensor(a, dtype=dtype) - g.h0
            g.target_spin = torch.as_tensor(b, dtype=dtype) - g.h0_spin
        else:
            hp = _padded(system, system.matrices["H"], idx, layout, pos, np.float64)
            g.target = torch.as_tensor(hp, dtype=dtype) - g.h0
    return g, idx


def batch_graphs(graphs: list[Graph]) -> Graph:
    """Concatenate graphs of the same spin kind into one (atom and edge indices offset)."""
    a_off, e_off = 0, 0
    parts: dict[str, list] = {k: [] for k in ("z", "mirror") + Graph.EDGE_FIELDS}
    for g in graphs:
        parts["z"].append(g.z)
        parts["mirror"].append(g.mirror + e_off)
        for k in Graph.EDGE_FIELDS:
            v = getattr(g, k)
            parts[k].append(v + a_off if k in ("edge_src", "edge_dst") else v)
        a_off += len(g.z)
        e_off += len(g.edge_src)
    cat = {k: (torch.cat(v) if all(x is not None for x in v) else None) for k, v in parts.items()}
    ewald = torch.block_diag(*[g.ewald for g in graphs]) if all(g.ewald is not None for g in graphs) else None
    if all(g.vp is not None for g in graphs):
        e_offs = np.cumsum([0] + [len(g.edge_src) for g in graphs])[:-1]
        a_offs = np.cumsum([0] + [len(g.z) for g in graphs])[:-1]
        cat["vp"] = torch.cat([g.vp for g in graphs])
        cat["vp_edge"] = torch.cat([g.vp_edge + int(o) for g, o in zip(graphs, e_offs)])
        cat["vp_atom"] = torch.cat([g.vp_atom + int(o) for g, o in zip(graphs, a_offs)])
    return Graph(spinor=graphs[0].spinor, n_atoms=a_off, ewald=ewald, **cat)


def edge_spans(graphs: list[Graph]) -> list[slice]:
    """The slice of each graph's directed edges in ``batch_graphs(graphs)``."""
    out, e0 = [], 0
    for g in graphs:
        out.append(slice(e0, e0 + len(g.edge_src)))
        e0 += len(g.edge_src)
    return out


def corrections_to_blocks(system: System, idx: EdgeIndex, layout: BasisLayout, delta: np.ndarray,
                          delta_spin: np.ndarray | None) -> BlockSparse:
    """Padded per-edge corrections (stored half = first n_stored edges) → BlockSparse in the system's layout."""
    pos = [layout.positions(b) for b in system.bases]
    h0 = system.matrices["H0"]
    ei, ej, R = idx.ei[: idx.n_stored], idx.ej[: idx.n_stored], idx.R[: idx.n_stored]
    norb = system.norb
    sizes = norb[ei] * norb[ej]
    off = np.concatenate([[0], np.cumsum(sizes)])
    edge, lr, lc = _entry_index(off, norb[ei], norb[ej])
    pi = np.concatenate([pos[k] for k in system.kinds])
    aoff = np.concatenate([[0], np.cumsum(norb)])
    r, c = pi[aoff[ei[edge]] + lr], pi[aoff[ej[edge]] + lc]
    a = delta[edge, r, c].astype(np.float64)  # gathered first: no float64 copy of the padded arrays
    if h0.spin == "spinor":
        b = delta_spin[edge, r, c].astype(np.float64) if delta_spin is not None else np.zeros((len(a), 3))
        data = ab_to_spinor(a, b)
        m = BlockSparse(norb, ei, ej, R, off, data, "spinor")
    else:
        m = BlockSparse(norb, ei, ej, R, off, a, "none")
    return m.aligned_to(h0)
