"""Matrix elements of atom-centred local potentials between the NAO basis functions of a crystal.

The SCF changes only the density-dependent part of the Kohn–Sham potential, V_H + V_xc, and that part
is a local multiplicative potential: ΔH(R)_ij = ⟨φ_i(r − τ_i)| ΔV(r) |φ_j(r − τ_j − R)⟩ for one periodic
field ΔV(r). Expanding ΔV in atom-centred radial functions,

    ΔV(r) = Σ_k Σ_m c_km Σ_T g_m(|r − τ_k − T|),   g_m(r) = exp(−r² / 2σ_m²),

makes ΔH linear in the coefficients c_km (eV): ΔH = Σ_km c_km V^(k,m), with the three-centre integrals

    V^(k,m)(R)_ij = ∫ φ_i(r − τ_i) Σ_T g_m(|r − τ_k − T|) φ_j(r − τ_j − R) dr

computed here (dimensionless; g is 1 at its centre). They are evaluated by quadrature on a uniform
grid of the cell. A grid fixed in space would break the exact symmetries by its quadrature error
(about 1e-3 relative at 0.2 Å), so the integrals are the average of the quadratures on the grids
anchored at every atom (origin τ_a, points τ_a + (n/N)·A): rotating or inverting the crystal rotates
or inverts every grid with it, translating it or permuting its atoms permutes the grids, and moving
an atom by a lattice vector leaves its grid unchanged. So the integrals transform exactly with the
basis' Wigner-D matrices, whatever the grid spacing. Cost: one quadrature per atom, each over the
whole cell, so it grows as N² with the number of atoms (meant for the cells of a training set).

Units: lengths Å, radial tables Å^-3/2 (so V^(k,m) with g = 1 is dimensionless, and with g ≡ 1 it is S).
"""

from __future__ import annotations

import numpy as np

from ..errors import MissingDataError
from .blocks import BlockSparse
from .density import _orbital_values, _PairLookup, periodic_images


class _GaussianField:
    """The Gaussians g_m of every atom of the cell, all periodic images summed, at grid points; images
    farther than 7σ_max from a block of points are left out (their tails are below 3e-11)."""

    def __init__(self, system, sigmas) -> None:
        self.sigmas = np.asarray(sigmas, dtype=float)
        self.n_atoms = system.n_atoms
        self.reach = 7.0 * float(self.sigmas.max())
        self.owner, _T, self.pos = periodic_images(np.asarray(system.lattice, dtype=float), system.positions,
                                                   self.reach, margin=2)

    def images(self, p: np.ndarray, centre: np.ndarray, rad: float) -> tuple[np.ndarray, np.ndarray]:
        """(owner (M,), g (p, M, m)): the images near the points p (within ``rad`` of ``centre``)."""
        sel = np.nonzero(np.linalg.norm(self.pos - centre, axis=1) < self.reach + rad)[0]
        d2 = ((p[:, None, :] - self.pos[sel][None]) ** 2).sum(-1)
        return self.owner[sel], np.exp(-d2[:, :, None] / (2.0 * self.sigmas**2))


def potential_integrals(system, sigmas, pattern: BlockSparse, spacing: float = 0.2) -> np.ndarray:
    """(nnz, n_atoms, n_sigma) V^(k,m) for every stored entry of ``pattern`` (its own block order and
    half), atom k of the cell (with all its images) and width σ_m (Å, ``sigmas``).

    ``system``: a System whose bases hold their radial tables; ``spacing``: grid step (Å, at most).
    """
    field = _GaussianField(system, sigmas)
    n_at, nm = system.n_atoms, len(field.sigmas)

    def values(p: np.ndarray, c: np.ndarray, rad: float) -> np.ndarray:
        owner, gv = field.images(p, c, rad)
        v = np.zeros((n_at, len(p), nm))
        np.add.at(v, owner, gv.transpose(1, 0, 2))  # each atom's images summed
        return v.transpose(1, 0, 2).reshape(len(p), -1)

    return _grid_integrals(system, pattern, spacing, n_at * nm, values).reshape(-1, n_at, nm)


def overlap_by_quadrature(system, pattern: BlockSparse, spacing: float = 0.2) -> np.ndarray:
    """(nnz,) S(R)_ij of the stored entries of ``pattern`` by the same atom-anchored grid quadrature
    (g ≡ 1): set beside the code's own S, its difference is the quadrature error of the integrals."""
    return _grid_integrals(system, pattern, spacing, 1, lambda p, c, rad: np.ones((len(p), 1)))[:, 0]


def origin_atoms(system, limit: int | None = None) -> np.ndarray:
    """The atoms whose anchored grids are averaged: all of them, or beyond ``limit`` atoms the first
    ``limit`` in a fixed order (element, then fractional coordinates), which does not depend on how the
    atoms are numbered; the symmetries then hold to the quadrature's accuracy rather than exactly."""
    n = system.n_atoms
    if limit is None or n <= limit:
        return np.arange(n)
    f = np.round(system.frac_positions % 1.0, 6) % 1.0
    order = np.lexsort((f[:, 2], f[:, 1], f[:, 0], np.array(system.elements)))
    return order[:limit]


def potential_matrix(system, sigmas, coeffs: np.ndarray, pattern: BlockSparse, spacing: float = 0.2,
                     max_origins: int | None = 2) -> np.ndarray:
    """(nnz,) eV: Σ_k Σ_m c_km V^(k,m) for the stored entries of ``pattern``, the matrix of the one field
    ΔV(r) = Σ_km c_km Σ_T g_m(|r − τ_k − T|) integrated at once (coeffs (n_atoms, n_sigma), eV). Equal to
    contracting :func:`potential_integrals` with the coefficients, at the cost of a single function; for
    cells of more than ``max_origins`` atoms it averages that many anchored grids (``origin_atoms``)."""
    field = _GaussianField(system, sigmas)
    coeffs = np.asarray(coeffs, dtype=float)

    def values(p: np.ndarray, c: np.ndarray, rad: float) -> np.ndarray:
        owner, gv = field.images(p, c, rad)
        return np.einsum("pim,im->p", gv, coeffs[owner])[:, None]

    return _grid_integrals(system, pattern, spacing, 1, values, origins=origin_atoms(system, max_origins))[:, 0]


def _grid_integrals(system, pattern: BlockSparse, spacing: float, n_func: int, values, block: int = 6,
                    origins: np.ndarray | None = None) -> np.ndarray:
    """(nnz, n_func) ∫ φ_i(r − τ_i) v_f(r) φ_j(r − τ_j − R) dr for the stored entries of ``pattern``,
    averaged over the grids anchored at the ``origins`` atoms (default every atom);
    ``values(points (p, 3), centre (3,), radius)`` gives the periodic functions v_f at the points (p, n_func)."""
    lat = np.asarray(system.lattice, dtype=float)
    bases = [system.bases[k] for k in system.kinds]
    for b in system.bases:
        if any(len(sh.r) == 0 for sh in b.shells):
            raise MissingDataError(f"{b.source or b.element}: the orbital file's radial tables were not read "
                                   "(grid integrals of the basis need them)")
    shape = tuple(max(1, int(np.ceil(np.linalg.norm(a) / spacing))) for a in lat)
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1)
    dv = abs(np.linalg.det(lat)) / np.prod(shape)
    rc = np.array([b.rcut for b in bases])
    owner, T, pos = periodic_images(lat, system.positions, float(rc.max()), margin=2)  # any origin: 1 cell more
    ei, ej, R, _off, _mir = pattern.full_edges()
    lookup = _PairLookup(ei, ej, R)
    n_stored = pattern.n_edges  # full_edges lists the stored blocks first
    norb = pattern.norb
    offsets = pattern.offsets
    acc = np.zeros((int(offsets[-1]), n_func))
    origins = np.arange(system.n_atoms) if origins is None else np.asarray(origins)
    for origin in system.positions[origins]:  # one quadrature per atom-anchored grid, averaged
        pts = origin + frac @ lat
        for bx in range(0, shape[0], block):
            for by in range(0, shape[1], block):
                for bz in range(0, shape[2], block):
                    p = pts[bx : bx + block, by : by + block, bz : bz + block].reshape(-1, 3)
                    c = p.mean(0)
                    rad = float(np.linalg.norm(p - c, axis=1).max())
                    near = np.nonzero(np.linalg.norm(pos - c, axis=1) < rc[owner] + rad)[0]
                    if len(near) == 0:
                        continue
                    e = lookup(owner[near][:, None], owner[near][None, :], T[near][None, :] - T[near][:, None])
                    xs, ys = np.nonzero(e < n_stored)  # image pairs that are stored blocks of the pattern
                    if len(xs) == 0:
                        continue
                    n_img = norb[owner[near]]
                    col0 = np.concatenate([[0], np.cumsum(n_img)])
                    phi = np.concatenate([_orbital_values(bases[owner[a]], p - pos[a]) for a in near], axis=1)
                    v = values(p, c, rad) * dv
                    m = np.einsum("pa,pf,pb->fab", phi, v, phi, optimize=True)  # (f, columns, columns)
                    # every entry of every pair's block: its row and column in m, its index in the pattern
                    ek = e[xs, ys]
                    ni, nj = n_img[xs], n_img[ys]
                    size = ni * nj
                    pair = np.repeat(np.arange(len(xs)), size)
                    local = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
                    rows = col0[xs][pair] + local // nj[pair]
                    cols = col0[ys][pair] + local % nj[pair]
                    target = offsets[ek][pair] + local
                    vals = m[:, rows, cols].T  # (entries, f)
                    order = np.argsort(target, kind="stable")
                    uniq, first = np.unique(target[order], return_index=True)
                    acc[uniq] += np.add.reduceat(vals[order], first, axis=0)
    return acc / len(origins)
