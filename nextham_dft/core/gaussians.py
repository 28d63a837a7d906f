"""Atom-centred Gaussian functions for a density on a grid: the representation a density network predicts.

Per atom, for l = 0..lmax, width σ (Å) in ``sigmas`` and m = −l..l:

    g_lσm(r) = (r/σ)^l exp(−r²/2σ²) Y_lm(r̂) / N_lσ,    N_lσ² = σ³ Γ(l + 3/2) / 2,

Y e3nn's real harmonics ('integral' normalisation), so each isolated g has unit L2 norm and the
coefficients of an atom transform as the irreps ``GaussianBasis.irreps`` (l even: e, l odd: o, the parity
of a density). Periodic images are summed. A density Δρ (e/Å³) is represented by the ridge fit

    c = argmin ∫|Σ c g − Δρ|² + λ|c|²,   (BᵀB dv + λ) c = Bᵀ Δρ dv,

whose λ keeps overlapping functions from cancelling with large coefficients (the plain least-squares fit
of four widths up to 2 Å reached coefficients of 10³). Grids are those of :mod:`.scf`: the points
origin + (n/N)·A of the lattice A (Å).

The centres ("sites") are a system's atoms, optionally with the midpoints of its nearest-neighbour bonds
(:func:`bond_midpoints`, :class:`Sites`): functions of l ≤ 2 on the atoms alone cannot hold the bond charge
of tetrahedral crystals (their first site-symmetric harmonic is l = 3); one set more at each bond's
midpoint can (scripts/diagnostics/density_oracle.py --bonds).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gamma, pi, sqrt
from typing import Iterator, Sequence

import numpy as np
from scipy.spatial import cKDTree

from .density import grid_boxes, grid_points, periodic_images, periodic_pairs
from .sph import e3nn_harmonics

#: each function reaches this many of its widths (exp(−4.5²/2) = 4e-5 of the peak), and is zero beyond
REACH_SIGMAS = 4.5


@dataclass(frozen=True)
class Sites:
    """Centres of Gaussians in a periodic cell: lattice (3, 3) Å (rows), positions (n, 3) Å. Anything with
    these two attributes (a System) is a set of sites."""

    lattice: np.ndarray
    positions: np.ndarray


def bond_midpoints(lattice: np.ndarray, positions: np.ndarray, factor: float = 1.2) -> np.ndarray:
    """(bonds, 3) Å: the midpoint of every bond, wrapped into the cell [0, 1) in fractional coordinates.

    A bond joins atoms i and j (any periodic image, j = i included) closer than ``factor`` times the
    shorter of the two atoms' nearest-neighbour distances, each bond once. The rule uses distances only,
    so the midpoints rotate and translate with the crystal and do not depend on the atoms' order (their own
    order is sorted by fractional coordinate, rounded to 1e-6)."""
    lat = np.asarray(lattice, dtype=float)
    pos = np.asarray(positions, dtype=float)
    reach = 1.0
    while True:  # the nearest neighbours of every atom lie within reach
        src, dst, vec = periodic_pairs(lat, pos, reach)
        d = np.linalg.norm(vec, axis=1)
        nearest = np.full(len(pos), np.inf)
        np.minimum.at(nearest, dst, d)
        if np.isfinite(nearest).all() and factor * nearest.max() <= reach:
            break
        reach *= 2.0
    keep = d < factor * np.minimum(nearest[src], nearest[dst])
    mid = pos[dst[keep]] + 0.5 * vec[keep]
    frac = np.round(np.round(np.linalg.solve(lat.T, mid.T).T, 6) % 1.0, 6) % 1.0 + 0.0  # + 0.0: no −0.0
    frac = np.unique(frac, axis=0)  # both directions of a bond land on one midpoint
    return frac @ lat


@dataclass(frozen=True)
class GaussianBasis:
    """sigmas: widths (Å); lmax: the highest angular momentum; ridge: λ of the fit (dimensionless: the
    functions have unit norm)."""

    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0)
    lmax: int = 2
    ridge: float = 1e-3

    @property
    def irreps(self) -> str:
        """e3nn irreps of one atom's coefficients, e.g. '3x0e+3x1o+3x2e' (l-major, then width)."""
        return "+".join(f"{len(self.sigmas)}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(self.lmax + 1))

    @property
    def per_atom(self) -> int:
        return len(self.sigmas) * (self.lmax + 1) ** 2

    def norms(self) -> np.ndarray:
        """(per_atom,) N_lσ of each coefficient, in the order of ``irreps``."""
        return np.concatenate([np.repeat([sqrt(s**3 * gamma(l + 1.5) / 2) for s in self.sigmas], 2 * l + 1)
                               for l in range(self.lmax + 1)])

    def charges(self) -> np.ndarray:
        """(per_atom,) ∫ g (electrons per unit coefficient): only the l = 0 functions carry charge."""
        q = np.zeros(self.per_atom)
        n = self.norms()
        for k, s in enumerate(self.sigmas):
            q[k] = (2 * pi * s * s) ** 1.5 / sqrt(4 * pi) / n[k]
        return q


def _columns(basis: GaussianBasis, d: np.ndarray) -> np.ndarray:
    """(len(d), per_atom) the functions of one atom at displacements d (Å) from it; each is zero beyond
    ``REACH_SIGMAS`` of its own width."""
    r = np.linalg.norm(d, axis=1)
    unit = np.where(r[:, None] > 1e-12, d, np.array([0.0, 0.0, 1.0]))
    cols = []
    for l in range(basis.lmax + 1):
        y = e3nn_harmonics(l, unit)
        for s in basis.sigmas:
            radial = np.where(r < REACH_SIGMAS * s, (r / s) ** l * np.exp(-r * r / (2 * s * s)), 0.0)
            cols.append(radial[:, None] * y)
    return np.concatenate(cols, axis=1) / basis.norms()


#: grid points a side of the boxes :func:`basis_blocks` works in
BOX = 8


def basis_blocks(system, shape: tuple[int, int, int], origin: np.ndarray, basis: GaussianBasis,
                 block: int = BOX) -> Iterator[tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]]:
    """(index, atoms, values) over the grid in sub-boxes of ``block`` points a side: the box's grid slices,
    the atoms whose functions reach it (any periodic image) and the values of their functions there,
    (points, len(atoms) · per_atom), images summed. Work and memory per box depend on the atoms near it
    only, so the cost grows with the cell's volume, not its square."""
    nf = basis.per_atom
    reach = REACH_SIGMAS * max(basis.sigmas)
    for index, p, near, atoms, slot, pos in _boxes(system, shape, origin, basis, block):
        d = p[None, :, :] - pos[near][:, None, :]  # (images, points, 3)
        img, row = np.nonzero(np.einsum("ipk,ipk->ip", d, d) < reach * reach)
        vals = _columns(basis, d[img, row])  # every (image, point) pair in reach at once
        ncols = len(atoms) * nf
        at = ((row * ncols + slot[img] * nf)[:, None] + np.arange(nf)).reshape(-1)
        out = np.bincount(at, weights=vals.reshape(-1), minlength=len(p) * ncols)  # images summed
        yield index, atoms, out.reshape(len(p), ncols)


def _boxes(system, shape, origin, basis: GaussianBasis, block: int):
    """(index, points, near images, their distinct atoms, each image's slot among them, image positions) of the
    grid's sub-boxes that some function reaches (:func:`basis_blocks`' neighbour search alone)."""
    lat = np.asarray(system.lattice, dtype=float)
    points = np.asarray(origin, dtype=float) + grid_points(lat, shape)
    reach = REACH_SIGMAS * max(basis.sigmas)
    owner, _t, pos = periodic_images(lat, np.asarray(system.positions, dtype=float), reach, margin=1)
    images = cKDTree(pos)
    for index, p, centre, rad in grid_boxes(points, block):
        near = np.asarray(images.query_ball_point(centre, reach + rad), dtype=np.int64)
        if len(near) == 0:
            continue
        atoms, slot = np.unique(owner[near], return_inverse=True)
        yield index, p, near, atoms, slot, pos


def _columns_of(atoms: np.ndarray, nf: int) -> np.ndarray:
    """The global coefficient columns of ``atoms`` (each ``nf`` wide), in order."""
    return (atoms[:, None] * nf + np.arange(nf)[None, :]).reshape(-1)


def kept_basis_blocks(system, shape, origin, basis: GaussianBasis, max_bytes: float) -> list | None:
    """:func:`basis_blocks` as a list, to pass as ``blocks`` to the fits and densities that share one grid and
    one set of sites, or None when the values would take more than ``max_bytes`` (found by the neighbour search
    alone, before any value is computed)."""
    size = sum(8 * len(p) * len(atoms) * basis.per_atom for _, p, _, atoms, _, _ in _boxes(system, shape, origin, basis, BOX))
    return list(basis_blocks(system, shape, origin, basis)) if size <= max_bytes else None


def fit_densities(system, shape, origin, dv: float, deltas: Sequence[np.ndarray],
                  basis: GaussianBasis, blocks: Sequence | None = None) -> list[np.ndarray]:
    """:func:`fit_density` of several densities on one grid: the functions' values and their Gram matrix are
    computed once, and one solve takes every right-hand side. ``blocks``: :func:`kept_basis_blocks` of the same
    sites, grid and basis, when at hand."""
    n = len(system.positions) * basis.per_atom
    rhos = [np.asarray(d, dtype=float).reshape(shape) for d in deltas]
    gram, rhs = np.zeros((n, n)), np.zeros((n, len(rhos)))
    for index, atoms, b in (blocks if blocks is not None else basis_blocks(system, shape, origin, basis)):
        live = np.flatnonzero(np.abs(b).max(axis=0) > 0)  # a far atom reaches a box with its wide functions only
        b = b[:, live]
        cols = _columns_of(atoms, basis.per_atom)[live]
        gram[np.ix_(cols, cols)] += b.T @ b * dv
        rhs[cols] += b.T @ np.stack([r[index].reshape(-1) for r in rhos], axis=1) * dv
    sol = np.linalg.solve(gram + basis.ridge * np.eye(n), rhs)
    return [sol[:, k].reshape(len(system.positions), basis.per_atom) for k in range(len(rhos))]


def fit_density(system, shape, origin, dv: float, delta_rho: np.ndarray, basis: GaussianBasis) -> np.ndarray:
    """(sites, per_atom) ridge-fit coefficients of ``delta_rho`` (e/Å³ on the grid ``shape``, cell volume
    element ``dv`` Å³)."""
    return fit_densities(system, shape, origin, dv, [delta_rho], basis)[0]


def densities_of(system, shape, origin, coefs: Sequence[np.ndarray], basis: GaussianBasis,
                 blocks: Sequence | None = None) -> list[np.ndarray]:
    """:func:`density_of` of several coefficient sets, the functions' values computed once (``blocks``: as in
    :func:`fit_densities`)."""
    outs = [np.zeros(tuple(shape)) for _ in coefs]
    cs = np.stack([np.asarray(c, dtype=float).reshape(-1) for c in coefs], axis=1)
    for index, atoms, b in (blocks if blocks is not None else basis_blocks(system, shape, origin, basis)):
        vals = b @ cs[_columns_of(atoms, basis.per_atom)]
        for k, out in enumerate(outs):
            out[index] = vals[:, k].reshape(out[index].shape)
    return outs


def density_of(system, shape, origin, coef: np.ndarray, basis: GaussianBasis,
               blocks: Sequence | None = None) -> np.ndarray:
    """Σ c g on the grid (e/Å³ for c in the units of :func:`fit_density`), shape ``shape``."""
    return densities_of(system, shape, origin, [coef], basis, blocks)[0]


def basis_matrix(system, shape, origin, basis: GaussianBasis) -> np.ndarray:
    """(grid points, sites · per_atom) every function on the whole grid (C order of ``shape``): for the
    small cells of training data (memory grows as the cell's volume times its atoms)."""
    n = len(system.positions) * basis.per_atom
    flat = np.arange(int(np.prod(shape))).reshape(shape)
    out = np.zeros((flat.size, n))
    for index, atoms, b in basis_blocks(system, shape, origin, basis):
        out[np.ix_(flat[index].reshape(-1), _columns_of(atoms, basis.per_atom))] = b
    return out


def neutralised(coef: np.ndarray, basis: GaussianBasis) -> np.ndarray:
    """``coef`` with its net charge removed through the l = 0 coefficients, every atom alike (a change
    along the charges' direction: equivariant, and zero for a neutral set)."""
    c = np.array(coef, dtype=float)
    q = basis.charges()
    total = (c @ q).sum()
    return c - total * q / (len(c) * (q @ q))
