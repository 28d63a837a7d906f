"""Supercells: H(R), S(R) of a supercell as an exact re-indexing of the primitive cell's.

Supercell lattice A' = P A (P a 3×3 integer matrix, rows). Atom (i, t) of the
supercell sits at τ_i + t·A for the lattice points t inside the supercell; the
block <(i,t)| M |(j,u), R'> equals the primitive block <i| M |j, R> with
R = u + R'·P − t.
"""

from __future__ import annotations

import numpy as np

from .blocks import BlockSparse
from .system import System


def lattice_points(P: np.ndarray) -> np.ndarray:
    """(det P, 3) integer primitive translations t inside the supercell P (in primitive coordinates)."""
    P = np.asarray(P, dtype=np.int64)
    n = int(round(abs(np.linalg.det(P))))
    if n == 0:
        raise ValueError("supercell matrix is singular")
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) @ P
    lo, hi = corners.min(0), corners.max(0)
    g = np.stack(np.meshgrid(*[np.arange(l, h + 1) for l, h in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    frac = g @ np.linalg.inv(P)
    inside = np.all((frac > -1e-9) & (frac < 1 - 1e-9), axis=1)
    pts = g[inside]
    if len(pts) != n:
        raise RuntimeError("lattice-point enumeration failed")
    return pts


def supercell_matrix(m: BlockSparse, P: np.ndarray, points: np.ndarray) -> BlockSparse:
    """Block-sparse matrix of the supercell; atom order: for each lattice point t, all primitive atoms."""
    P = np.asarray(P, dtype=np.int64)
    nat = m.n_atoms
    ncell = len(points)
    ei, ej, R, off, data = m.full_blocks()
    pinv = np.linalg.inv(P)
    # index lattice points
    key = {tuple(t): c for c, t in enumerate(points)}
    # for each (edge, cell t): u + R'P = t + R
    tgt = points[None, :, :] + R[:, None, :]  # (E, ncell, 3)
    Rp = np.floor(tgt @ pinv + 1e-9).astype(np.int64)
    u = tgt - Rp @ P
    ucell = np.array([key[tuple(x)] for x in u.reshape(-1, 3)]).reshape(len(R), ncell)
    tcell = np.broadcast_to(np.arange(ncell)[None, :], ucell.shape)
    new_i = (tcell * nat + ei[:, None]).reshape(-1)
    new_j = (ucell * nat + ej[:, None]).reshape(-1)
    new_R = Rp.reshape(-1, 3)
    src_edge = np.repeat(np.arange(len(R)), ncell)
    sizes = np.diff(off)[src_edge]
    new_off = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.repeat(off[src_edge] - new_off[:-1], sizes) + np.arange(int(new_off[-1]))
    norb = np.tile(m.norb, ncell)
    return BlockSparse.from_full_blocks(norb, new_i, new_j, new_R, new_off, data[idx], m.spin)


def make_supercell(system: System, P: np.ndarray) -> System:
    """The supercell P of a System, with every matrix re-indexed (no DFT run needed)."""
    P = np.asarray(P, dtype=np.int64).reshape(3, 3)
    pts = lattice_points(P)
    shift = pts @ system.lattice  # (ncell, 3)
    positions = (shift[:, None, :] + system.positions[None]).reshape(-1, 3)
    kinds = np.tile(system.kinds, len(pts))
    sc = System(
        lattice=P @ system.lattice,
        positions=positions,
        kinds=kinds,
        bases=system.bases,
        spin_mode=system.spin_mode,
        soc=system.soc,
        nelec=None if system.nelec is None else system.nelec * len(pts),
        smearing=system.smearing,
        magmom=None if system.magmom is None else np.tile(system.magmom, (len(pts), 1)),
        meta={**system.meta, "supercell_of": system.formula, "supercell_matrix": P.tolist()},
    )
    sc.matrices = {k: supercell_matrix(v, P, pts) for k, v in system.matrices.items()}
    return sc
