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
basis' Wigner-D matrices, whatever the grid spacing. The Gaussians' periodic sums on each grid come
from their Fourier series (exact at the grid points; one inverse FFT per function), the orbitals of all
images of a species in one evaluation. Cost: one quadrature per atom, each over the whole cell, so it
grows as N² with the number of atoms (meant for the cells of a training set); ``potential_matrix``
averages a fixed number of grids, so it grows as N.

Units: lengths Å, radial tables Å^-3/2 (so V^(k,m) with g = 1 is dimensionless, and with g ≡ 1 it is S).
"""

from __future__ import annotations

import numpy as np

from ..errors import MissingDataError
from .blocks import BlockSparse
from .density import GridOrbitals
from .ewald import lattice_points


#: the Fourier series of a Gaussian of width σ is cut where σ²G²/2 exceeds this (e^-40: 4e-18 relative)
_FOURIER_CUT = 40.0


def _grid_shape(lattice: np.ndarray, spacing: float) -> tuple[int, int, int]:
    """Points along each lattice vector of a uniform grid of step ``spacing`` (Å, at most)."""
    return tuple(max(1, int(np.ceil(np.linalg.norm(a) / spacing))) for a in lattice)  # type: ignore[return-value]


class _GaussianField:
    """Σ_T g_m(|r − τ_k − T|) of every atom k and width σ_m on the uniform grids anchored at atoms, from
    the periodic sum's Fourier series (Poisson summation):

        Σ_T g(|r − τ − T|) = (1/Ω) Σ_G ĝ(G) e^{iG·(r − τ)},  ĝ(G) = (2πσ²)^{3/2} e^{−σ²G²/2},

    over the reciprocal vectors of a sphere |G| < √(2·40)/σ_min (a rotation carries the sphere with the
    crystal, so every symmetry holds). Components beyond the grid's own frequencies are folded onto the
    ones they equal at the grid points, so the values at the points are exact to round-off, and one
    inverse FFT per function gives them on the whole grid.
    """

    def __init__(self, system, sigmas) -> None:
        self.sigmas = np.asarray(sigmas, dtype=float)
        lat = np.asarray(system.lattice, dtype=float)
        self.positions = np.asarray(system.positions, dtype=float)
        omega = abs(np.linalg.det(lat))
        recip = 2.0 * np.pi * np.linalg.inv(lat).T  # rows b_i, a_i·b_j = 2π δ_ij
        self.h, self.g = lattice_points(recip, np.sqrt(2.0 * _FOURIER_CUT) / float(self.sigmas.min()))
        g2 = (self.g * self.g).sum(1)
        self.ghat = (2.0 * np.pi * self.sigmas**2) ** 1.5 * np.exp(-0.5 * g2[:, None] * self.sigmas**2) / omega

    def _on_grid(self, coef: np.ndarray, shape: tuple[int, int, int], origin: np.ndarray) -> np.ndarray:
        """(N1, N2, N3, F): at the points origin + (n/N)·A, the real fields Σ_G coef[G, f] e^{iG·r} (coef
        (nG, F) over this field's G): each coefficient, times e^{iG·origin}, is added to the grid
        frequency h mod N that G equals at the points, then one inverse FFT per field."""
        phase = np.exp(1j * (self.g @ origin))
        idx = np.ravel_multi_index(tuple((self.h % np.array(shape)).T), shape)
        n = int(np.prod(shape))
        out = np.empty(shape + (coef.shape[1],))
        for f in range(coef.shape[1]):
            c = coef[:, f] * phase
            spec = (np.bincount(idx, c.real, minlength=n) + 1j * np.bincount(idx, c.imag, minlength=n)).reshape(shape)
            out[..., f] = np.fft.ifftn(spec).real * n
        return out

    def per_atom(self, shape: tuple[int, int, int], origin: np.ndarray) -> np.ndarray:
        """(N1, N2, N3, n_atoms·n_sigma): every atom's Gaussians (images summed), atom-major columns."""
        sf = np.exp(-1j * (self.g @ self.positions.T))  # (nG, atoms)
        coef = (sf[:, :, None] * self.ghat[:, None, :]).reshape(len(self.g), -1)
        return self._on_grid(coef, shape, origin)

    def combined(self, coeffs: np.ndarray, shape: tuple[int, int, int], origin: np.ndarray,
                 chunk: int = 65536) -> np.ndarray:
        """(N1, N2, N3, F): field f = Σ_km coeffs[f, k, m] × atom k's Gaussian m (images summed); coeffs
        (n_atoms, n_sigma) is one field (F = 1)."""
        coeffs = np.asarray(coeffs, dtype=float).reshape((-1,) + np.shape(coeffs)[-2:])
        coef = np.empty((len(self.g), len(coeffs)), complex)
        for a in range(0, len(self.g), chunk):  # Σ_k e^{−iG·τ_k} Σ_m c_fkm ĝ_m(G), a block of G at a time
            sl = slice(a, a + chunk)
            sf = np.exp(-1j * (self.g[sl] @ self.positions.T))  # (G, atoms)
            coef[sl] = np.einsum("gk,gm,fkm->gf", sf, self.ghat[sl], coeffs)
        return self._on_grid(coef, shape, origin)


def potential_integrals(system, sigmas, pattern: BlockSparse, spacing: float = 0.2) -> np.ndarray:
    """(nnz, n_atoms, n_sigma) V^(k,m) for every stored entry of ``pattern`` (its own block order and
    half), atom k of the cell (with all its images) and width σ_m (Å, ``sigmas``).

    ``system``: a System whose bases hold their radial tables; ``spacing``: grid step (Å, at most).
    """
    field = _GaussianField(system, sigmas)
    n_at, nm = system.n_atoms, len(field.sigmas)
    return _grid_integrals(system, pattern, spacing, field.per_atom).reshape(-1, n_at, nm)


def overlap_by_quadrature(system, pattern: BlockSparse, spacing: float = 0.2) -> np.ndarray:
    """(nnz,) S(R)_ij of the stored entries of ``pattern`` by the same atom-anchored grid quadrature
    (g ≡ 1): set beside the code's own S, its difference is the quadrature error of the integrals."""
    return _grid_integrals(system, pattern, spacing, lambda shape, origin: np.ones(shape + (1,)))[:, 0]


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
    cells of more than ``max_origins`` atoms it averages that many anchored grids (``origin_atoms``).
    Several fields at once (the networks of an ensemble): coeffs (F, n_atoms, n_sigma) → (nnz, F), one
    quadrature whose orbital values all F share."""
    field = _GaussianField(system, sigmas)
    coeffs = np.asarray(coeffs, dtype=float)
    out = _grid_integrals(system, pattern, spacing, lambda shape, origin: field.combined(coeffs, shape, origin),
                          origins=origin_atoms(system, max_origins))
    return out if coeffs.ndim == 3 else out[:, 0]


def _grid_integrals(system, pattern: BlockSparse, spacing: float, field, block: int = 6,
                    origins: np.ndarray | None = None, grid_origin: np.ndarray | None = None,
                    orbitals: GridOrbitals | None = None) -> np.ndarray:
    """(nnz, F) ∫ φ_i(r − τ_i) v_f(r) φ_j(r − τ_j − R) dr for the stored entries of ``pattern``,
    averaged over the grids anchored at the ``origins`` atoms (default every atom), or on the one grid
    anchored at the point ``grid_origin`` (Å) when that is given (``orbitals``: that grid's orbital
    values, kept from an earlier call);
    ``field(shape, origin)`` gives the periodic functions v_f on the grid origin + (n/N)·A, (N1, N2, N3, F)."""
    lat = np.asarray(system.lattice, dtype=float)
    for b in system.bases:
        if any(len(sh.r) == 0 for sh in b.shells):
            raise MissingDataError(f"{b.source or b.element}: the orbital file's radial tables were not read "
                                   "(grid integrals of the basis need them)")
    shape = _grid_shape(lat, spacing)
    dv = abs(np.linalg.det(lat)) / np.prod(shape)
    acc: np.ndarray | None = None
    origins = np.arange(system.n_atoms) if origins is None else np.asarray(origins)
    anchors = system.positions[origins] if grid_origin is None else np.asarray(grid_origin, dtype=float).reshape(1, 3)
    if orbitals is not None and len(anchors) != 1:
        raise ValueError("kept orbital values serve one grid: give grid_origin with orbitals")
    size = int(pattern.offsets[-1])
    for origin in anchors:  # one quadrature per atom-anchored grid, averaged
        grid = orbitals if orbitals is not None else GridOrbitals(system, shape, origin, block)
        fv = field(shape, origin) * dv
        if acc is None:
            acc = np.zeros((fv.shape[-1], size + 1))
        for (index, _near, _columns, phi), where in grid.blocks_with_entries(pattern):
            v = fv[index].reshape(len(phi), -1)
            flat = where.reshape(-1)
            for f in range(v.shape[1]):
                m = phi.T @ (v[:, f, None] * phi)  # (M, M) ∫ φ_a v_f φ_b over the block
                acc[f] += np.bincount(flat, weights=m.reshape(-1), minlength=size + 1)
    assert acc is not None
    # every off-site block was summed twice (as itself and, transposed, as its mirror); the last slot held
    # the pairs of no block
    weight = np.repeat(np.where(pattern.onsite_blocks(), 1.0, 0.5), np.diff(pattern.offsets))
    return (acc[:, :size] * weight).T / len(anchors)
