"""Reciprocal space: H(k), S(k), the generalized eigenproblem, occupations and the Fermi level.

Phase convention: M(k) = Σ_R exp(i 2π k·R) M(R), k in fractional (direct)
coordinates of the reciprocal lattice, with M(R)_ij = <φ_i(r-τ_i)|M|φ_j(r-τ_j-R)>.
Spinor matrices use the interleaved basis index 2μ + s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from nextham_dft.errors import OverlapNotPositiveDefiniteError

from .blocks import BlockSparse
from .units import RY_TO_EV


class KAssembler:
    """Vectorised M(k) = Σ_R e^{i2πk·R} M(R) for many k at once.

    Every stored entry carries its flat matrix position and R index. When the dense matrices M(R) of all
    distinct R fit in ``dense_bytes`` (small cells, dense k-meshes: an SCF's case) they are formed once and
    M(k) for all k is one matrix product of the phases with them; otherwise for each k the entries are
    multiplied by their phase and summed into the dense matrix with one ``bincount`` (no Python loop over R
    or atom pairs; memory-bound, see benchmarks/band_throughput.py).
    """

    def __init__(self, m: BlockSparse, spinor: bool = False, dense_bytes: float = 2.0**27) -> None:
        if spinor:
            rows, cols, _, vals = m.to_spinor_coo(with_R=False)
            self.R, self.ridx = m.entry_R_index(full=True, repeat=m.spinor_repeat)
            self.dim = 2 * m.dim
        else:
            if m.spin != "none":
                raise ValueError("a spin-resolved matrix needs spinor=True (or pick one spin channel)")
            rows, cols, _, vals = m.to_coo(full=True, with_R=False)
            self.R, self.ridx = m.entry_R_index(full=True)
            self.dim = m.dim
        self.flat = rows * self.dim + cols
        vals = np.asarray(vals)
        self.real_only = not np.iscomplexobj(vals)
        n2 = self.dim * self.dim
        self.by_R: np.ndarray | None = None  # (nR, dim²) M(R), real when M is
        if len(self.R) * n2 * (8 if self.real_only else 16) <= dense_bytes:
            # every (R, row, column) is one entry of the block list: placed, not summed
            dense = np.zeros(len(self.R) * n2, dtype=float if self.real_only else complex)
            dense[self.ridx.astype(np.int64) * n2 + self.flat] = vals
            self.by_R = dense.reshape(len(self.R), n2)
            return
        order = np.argsort(self.flat, kind="stable")
        self.flat, self.ridx = self.flat[order], self.ridx[order]
        self.vals = vals[order].astype(np.complex128)

    def __call__(self, kfrac: np.ndarray) -> np.ndarray:
        """(nk, dim, dim) complex M(k) at fractional k-points (nk, 3)."""
        kfrac = np.atleast_2d(np.asarray(kfrac, dtype=float))
        arg = 2 * np.pi * (kfrac @ self.R.T)  # (nk, nR)
        if self.by_R is not None:
            if self.real_only:
                out = (np.cos(arg) @ self.by_R) + 1j * (np.sin(arg) @ self.by_R)
            else:
                out = np.exp(1j * arg) @ self.by_R
            return out.reshape(len(kfrac), self.dim, self.dim)
        phase = np.exp(1j * arg)
        n2 = self.dim * self.dim
        out = np.empty((len(kfrac), self.dim, self.dim), dtype=np.complex128)
        for i in range(len(kfrac)):  # loop over k only
            v = self.vals * phase[i, self.ridx]
            re = np.bincount(self.flat, weights=v.real, minlength=n2)
            im = np.bincount(self.flat, weights=v.imag, minlength=n2)
            o = out[i].reshape(-1)
            o.real = re
            o.imag = im
        return out


def solve_generalized(hk: np.ndarray, sk: np.ndarray, vectors: bool = False, kpoints: np.ndarray | None = None):
    """Eigenvalues (nk, n) ascending of H(k) c = E S(k) c, batched over k.

    Raises OverlapNotPositiveDefiniteError naming the first k-point where S(k) is
    not positive definite (near-linearly-dependent basis) instead of returning
    meaningless eigenvalues. With vectors=True also returns C (nk, n, n) with
    C^† S C = 1.
    """
    L = overlap_cholesky(sk, kpoints)
    x = np.linalg.solve(L, hk)  # L^-1 H
    ht = np.linalg.solve(L, np.conj(np.swapaxes(x, -1, -2)))  # L^-1 H L^-†
    ht = 0.5 * (ht + np.conj(np.swapaxes(ht, -1, -2)))
    if not vectors:
        return np.linalg.eigvalsh(ht)
    e, v = np.linalg.eigh(ht)
    c = np.linalg.solve(np.conj(np.swapaxes(L, -1, -2)), v)
    return e, c


def overlap_cholesky(sk: np.ndarray, kpoints: np.ndarray | None = None) -> np.ndarray:
    """(nk, n, n) lower Cholesky factors L(k) of S(k) = L L^†; OverlapNotPositiveDefiniteError naming the first
    k-point where S(k) is not positive definite."""
    try:
        return np.linalg.cholesky(sk)
    except np.linalg.LinAlgError:
        bad = 0
        for k in range(len(sk)):
            try:
                np.linalg.cholesky(sk[k])
            except np.linalg.LinAlgError:
                bad = k
                break
        w = np.linalg.eigvalsh(sk[bad])
        where = f" k={np.round(kpoints[bad], 6).tolist()}" if kpoints is not None else f" k-point #{bad}"
        raise OverlapNotPositiveDefiniteError(
            f"S(k) is not positive definite at{where} (smallest eigenvalue {w[0]:.3e}): "
            "the basis is (near) linearly dependent; eigenvalues would be meaningless"
        ) from None


class FixedOverlap:
    """H(k) c = E S(k) c for many H on one S at fixed k-points (an SCF's iterations): S(k)'s inverse
    Cholesky factors L(k)⁻¹ are formed once, after which each H costs three matrix products and a
    Hermitian eigensolver per k, the same solution as :func:`solve_generalized`'s (C^† S C = 1)."""

    def __init__(self, s: BlockSparse, kfrac: np.ndarray, spinor: bool = False, chunk: int = 64) -> None:
        self.kfrac = np.atleast_2d(np.asarray(kfrac, dtype=float))
        self.spinor = bool(spinor)
        self.chunk = int(chunk)
        sa = KAssembler(s, spinor=spinor)
        self.linv = []
        for a in range(0, len(self.kfrac), self.chunk):
            kk = self.kfrac[a : a + self.chunk]
            L = overlap_cholesky(sa(kk), kk)
            self.linv.append(np.linalg.solve(L, np.broadcast_to(np.eye(sa.dim), L.shape)))
        self.nbytes = sum(x.nbytes for x in self.linv)

    def eigensystem(self, h: BlockSparse) -> tuple[np.ndarray, np.ndarray]:
        """(eigenvalues (nk, n) ascending, S-orthonormal eigenvectors (nk, n, n)) of ``h`` at the k-points."""
        ha = KAssembler(h, spinor=self.spinor)
        e, c = [], []
        for i, a in enumerate(range(0, len(self.kfrac), self.chunk)):
            li = self.linv[i]
            lih = np.conj(np.swapaxes(li, -1, -2))
            ht = li @ ha(self.kfrac[a : a + self.chunk]) @ lih
            ht = 0.5 * (ht + np.conj(np.swapaxes(ht, -1, -2)))
            ee, v = np.linalg.eigh(ht)
            e.append(ee)
            c.append(lih @ v)
        return np.concatenate(e), np.concatenate(c)


class SparseKAssembler(KAssembler):
    """M(k) as a scipy CSR matrix, for big cells where a dense H(k) does not pay (memory-bound).

    Same entries and phases as :class:`KAssembler`; the sparsity pattern is fixed once (the
    distinct flat positions, already sorted there), each k only sums the values into it.
    """

    def __init__(self, m: BlockSparse, spinor: bool = False) -> None:
        from scipy import sparse

        super().__init__(m, spinor, dense_bytes=0)
        ukey, self.slot = np.unique(self.flat, return_inverse=True)
        # CSR with sorted indices stores its data in (row, col) order, i.e. in ukey order
        self.template = sparse.csr_matrix((np.zeros(len(ukey), complex), (ukey // self.dim, ukey % self.dim)),
                                          shape=(self.dim, self.dim))
        self.template.sort_indices()

    def __call__(self, k: np.ndarray):  # type: ignore[override]
        """One k-point (3,) → CSR (dim, dim) complex."""
        v = self.vals * np.exp(2j * np.pi * (self.R @ np.asarray(k, dtype=float)))[self.ridx]
        out = self.template.copy()
        n = len(out.data)
        out.data = np.bincount(self.slot, weights=v.real, minlength=n) + 1j * np.bincount(self.slot, weights=v.imag,
                                                                                           minlength=n)
        return out


def bands_near(h: BlockSparse, s: BlockSparse, kfrac: np.ndarray, energy: float, nbands: int = 20) -> np.ndarray:
    """The ``nbands`` eigenvalues closest to ``energy`` (eV) at each k, by sparse shift-invert.

    For big cells (thousands of orbitals) where dense diagonalisation costs seconds per k:
    a sparse LU of H(k) − σS(k) and a Lanczos run (scipy ``eigsh``). Returns (nk, nbands) sorted;
    a collinear H, like :func:`band_energies`, (2, nk, nbands) (up, down).
    """
    from scipy.sparse.linalg import eigsh

    if h.spin == "collinear":
        return np.stack([bands_near(h.with_data(h.data[:, s_], "none"), s, kfrac, energy, nbands) for s_ in (0, 1)])
    spinor = h.spin == "spinor"
    ha, sa = SparseKAssembler(h, spinor), SparseKAssembler(s, spinor)
    out = []
    for k in np.atleast_2d(kfrac):
        hk, sk = ha(k), sa(k)
        w = eigsh(hk, k=min(nbands, ha.dim - 2), M=sk, sigma=energy, which="LM", return_eigenvectors=False)
        out.append(np.sort(w.real))
    return np.array(out)


def band_energies(h: BlockSparse, s: BlockSparse, kfrac: np.ndarray, chunk_bytes: float = 4e8) -> np.ndarray:
    """Eigenvalues (nk, nbands) of a Hamiltonian at fractional k-points, in H's units.

    Spinor H (layout 'spinor') is solved in the spinor basis with S ⊗ 1; a
    collinear H returns (2, nk, nbands) (up, down).
    """
    kfrac = np.atleast_2d(np.asarray(kfrac, dtype=float))
    if h.spin == "collinear":
        return np.stack([band_energies(h.with_data(h.data[:, s_], "none"), s, kfrac, chunk_bytes) for s_ in (0, 1)])
    spinor = h.spin == "spinor"
    ha, sa = KAssembler(h, spinor=spinor), KAssembler(s, spinor=spinor)
    dim = ha.dim
    step = max(1, int(chunk_bytes // (16 * dim * dim * 4)))
    out = []
    for a in range(0, len(kfrac), step):
        kk = kfrac[a : a + step]
        out.append(solve_generalized(ha(kk), sa(kk), kpoints=kk))
    return np.concatenate(out, axis=0)


# ---------------------------------------------------------------------------- occupations


@dataclass(frozen=True)
class Smearing:
    """Occupation smearing: method in {'gaussian', 'fd', 'mp', 'mp2', 'mv', 'fixed'}, width in eV."""

    method: str = "gaussian"
    sigma: float = 0.02 * RY_TO_EV

    def occupation(self, e: np.ndarray, mu: float) -> np.ndarray:
        """Occupation in [0, 1] (per state, spin degeneracy excluded)."""
        if self.method == "fixed" or self.sigma <= 0:
            return (e <= mu).astype(float)
        x = (e - mu) / self.sigma
        if self.method == "gaussian":
            return 0.5 * erfc(x)
        if self.method == "fd":
            return 0.5 * (1.0 - np.tanh(0.5 * x))
        if self.method in ("mp", "mp2"):
            f = 0.5 * erfc(x)
            h = np.exp(-x * x) / np.sqrt(np.pi)
            f = f - 0.5 * x * h  # first order (A1 = -1/4 √π, H1 = 2x)
            if self.method == "mp2":
                f = f + (1.0 / 32.0) * (16 * x**3 - 24 * x) * h  # second order (A2 = 1/32 √π, H3)
            return f
        if self.method == "mv":
            xp = x + 1.0 / np.sqrt(2.0)
            return 0.5 * erfc(xp) + np.exp(-xp * xp) / np.sqrt(2.0 * np.pi)
        raise ValueError(f"unknown smearing method {self.method!r}")


def electron_count(eigs: np.ndarray, weights: np.ndarray, mu: float, smearing: Smearing, degeneracy: float) -> float:
    """Σ_k w_k g Σ_n f((e_nk - μ)/σ) for eigs (nk, nb) or (nspin, nk, nb); weights sum to 1."""
    occ = smearing.occupation(eigs, mu)
    return float(degeneracy * np.sum(occ * weights[..., :, None]))


def fermi_level(eigs: np.ndarray, weights: np.ndarray, nelec: float, smearing: Smearing, degeneracy: float) -> float:
    """Chemical potential (eV) with the given electron count, by bisection.

    eigs: (nk, nb) or (nspin, nk, nb) eV; weights: (nk,) summing to 1; degeneracy:
    2 for spin-unpolarised, 1 for collinear channels or spinors. In a gap the
    midpoint of the gap is returned.
    """
    weights = np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    nb_total = eigs.shape[-1] * degeneracy * (eigs.shape[0] if eigs.ndim == 3 else 1)
    if nelec > nb_total + 1e-9:
        raise ValueError(f"{nelec} electrons do not fit in {nb_total:g} states")
    lo, hi = float(eigs.min()) - 20 * max(smearing.sigma, 1e-3) - 1, float(eigs.max()) + 20 * max(smearing.sigma, 1e-3) + 1
    sm = smearing if smearing.method != "fixed" and smearing.sigma > 0 else Smearing("gaussian", 1e-4)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if electron_count(eigs, weights, mid, sm, degeneracy) < nelec:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    mu = 0.5 * (lo + hi)
    # insulator: put μ mid-gap (the count is flat there)
    flat = eigs.reshape(-1)
    below, above = flat[flat <= mu], flat[flat > mu]
    if len(below) and len(above):
        vbm, cbm = below.max(), above.min()
        if cbm - vbm > 10 * max(smearing.sigma, 1e-3):
            n_vbm = electron_count(eigs, weights, 0.5 * (vbm + cbm), sm, degeneracy)
            if abs(n_vbm - nelec) < 1e-6:
                return float(0.5 * (vbm + cbm))
    return float(mu)
