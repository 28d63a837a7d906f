"""Periodic electrostatics: the Ewald matrix of a crystal's atomic sites.

``ewald_matrix(lattice, positions)[a, b]`` (eV per e²) is the electrostatic potential at site a
of a unit point charge on site b and on all its periodic images, site a's own charge at a
excluded, with a uniform compensating background and the G = 0 component set to zero (the
convention of plane-wave and NAO codes, whose Hartree potential has zero cell average). For
charges q (e), φ = A q (eV) is independent of the splitting parameter η, and the Coulomb energy
of a neutral set is ½ qᵀ A q. The matrix depends on interatomic distances only, so φ is
invariant under rotations, inversion and translations, and a supercell gives its atoms the φ of
the equivalent primitive-cell atoms.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import erfc

from .units import COULOMB_EV_ANG


def lattice_points(cell: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """(m (n, 3) integer, T (n, 3) Cartesian) of the lattice vectors T = m·cell (rows of ``cell`` the
    basis: the crystal's lattice, or its reciprocal vectors) with |T| ≤ reach. A sphere, so the set
    rotates with the lattice."""
    nmax = np.ceil(reach * np.linalg.norm(np.linalg.inv(cell), axis=0)).astype(int)  # |m_i| ≤ reach·|column i of cell⁻¹|
    ranges = [np.arange(-m, m + 1) for m in nmax]
    m = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
    t = m @ cell
    keep = np.einsum("ij,ij->i", t, t) <= reach**2
    return m[keep], t[keep]


#: sites whose real-space pair lists are built at once (bounds the temporary arrays for big cells)
ROW_CHUNK = 256


def ewald_matrix(lattice: np.ndarray, positions: np.ndarray, tol: float = 1e-11) -> np.ndarray:
    """(N, N) eV/e²: A[a, b] = Σ_T' 1/|r_b + T − r_a| summed the Ewald way (Gaussian split η,
    real-space and reciprocal-space parts each converged to ``tol`` relative), times e²/(4πε₀).

    lattice: (3, 3) Å, vectors as rows; positions: (N, 3) Cartesian Å. Symmetric.
    """
    lattice = np.asarray(lattice, dtype=float)
    pos = np.asarray(positions, dtype=float)
    n = len(pos)
    vol = abs(np.linalg.det(lattice))
    if vol < 1e-8:
        raise ValueError("Ewald sum: the lattice vectors are degenerate (zero cell volume)")
    eta = math.sqrt(math.pi) * (max(n, 1) / vol**2) ** (1.0 / 6.0)  # Å⁻¹, balances the two sums
    ln = math.log(1.0 / tol)
    r_cut = math.sqrt(ln) / eta
    g_cut = 2.0 * eta * math.sqrt(ln)
    frac = np.linalg.solve(lattice.T, pos.T).T
    pos = (frac - np.floor(frac)) @ lattice  # wrapped into the cell: the sum is periodic, and this bounds the images needed
    signs = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]])
    diam = float(np.linalg.norm(signs @ lattice, axis=1).max())  # the longest cell diagonal ≥ every |r_b − r_a|
    translations = lattice_points(lattice, r_cut + diam)[1]  # every image of every pair within r_cut
    images = (translations[:, None, :] + pos[None, :, :]).reshape(-1, 3)
    owner = np.tile(np.arange(n), len(translations))
    tree = cKDTree(images)
    a = np.zeros(n * n)
    for r0 in range(0, n, ROW_CHUNK):  # rows in chunks: the pair lists of ROW_CHUNK sites at a time
        pairs = cKDTree(pos[r0 : r0 + ROW_CHUNK]).sparse_distance_matrix(tree, r_cut, output_type="coo_matrix")
        r = pairs.data
        near = r > 1e-10  # a site's own charge is not in its potential
        a += np.bincount((pairs.row[near] + r0) * n + owner[pairs.col[near]], weights=erfc(eta * r[near]) / r[near],
                         minlength=n * n)
    a = a.reshape(n, n)
    recip = 2.0 * math.pi * np.linalg.inv(lattice).T  # rows b_i with a_i·b_j = 2π δ_ij
    m, gs = lattice_points(recip, g_cut)  # G and its Miller indices
    g2 = np.einsum("ij,ij->i", gs, gs)
    keep = g2 > 1e-12
    m, gs, g2 = m[keep], gs[keep], g2[keep]
    half = (m[:, 0] > 0) | ((m[:, 0] == 0) & ((m[:, 1] > 0) | ((m[:, 1] == 0) & (m[:, 2] > 0))))  # G and −G add the same: keep one, count it twice
    gs, g2 = gs[half], g2[half]
    w = (8.0 * math.pi / vol) * np.exp(-g2 / (4.0 * eta**2)) / g2
    phase = pos @ gs.T  # (N, nG)
    c, s = np.cos(phase), np.sin(phase)
    a += (c * w) @ c.T + (s * w) @ s.T
    a -= math.pi / (vol * eta**2)  # the compensating background (the G → 0 limit of the Gaussians)
    a[np.diag_indices(n)] -= 2.0 * eta / math.sqrt(math.pi)  # a site's own Gaussian
    return COULOMB_EV_ANG * 0.5 * (a + a.T)


def neutral_potential_operator(lattice: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N, N) eV/e²: A (1 − 11ᵀ/N), the map from any per-site charges q to the potential of the
    neutral charges q − mean(q) (the charge a model transfers between atoms must add up to zero)."""
    a = ewald_matrix(lattice, positions)
    return a - a.mean(axis=1, keepdims=True)
