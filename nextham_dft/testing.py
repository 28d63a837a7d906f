"""Helpers for users' and our own tests: Wigner-D matrices and rotated block comparison."""

from __future__ import annotations

import numpy as np

from .core.basis import SpeciesBasis, orbital_transform
from .core.blocks import BlockSparse
from .core.sph import spin_half_rotation


def wigner_d(l: int, q: np.ndarray) -> np.ndarray:
    """e3nn's Wigner-D matrix (2l+1, 2l+1) of an orthogonal 3×3 matrix, in float64.

    Improper q (det -1) includes the parity (-1)^l of the orbital.
    """
    import torch
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return o3.Irrep(l, (-1) ** l).D_from_matrix(torch.as_tensor(np.asarray(q, dtype=float))).numpy()
    finally:
        torch.set_default_dtype(old)


def irreps_d(irreps, q: np.ndarray) -> np.ndarray:
    """Block-diagonal Wigner-D of an e3nn Irreps for an orthogonal q, in float64."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return irreps.D_from_matrix(torch.as_tensor(np.asarray(q, dtype=float))).numpy()
    finally:
        torch.set_default_dtype(old)


def rotate_matrix(m: BlockSparse, kinds: np.ndarray, bases: list[SpeciesBasis], q: np.ndarray) -> BlockSparse:
    """Blocks of ``m`` after rotating the crystal by q (r -> q r): D B D^T, and U B U^† for spinors."""
    lmax = max(b.lmax for b in bases)
    d = {l: wigner_d(l, q) for l in range(lmax + 1)}
    out = m.transform_orbitals(kinds, [orbital_transform(b, d) for b in bases])
    if out.spin == "spinor":
        u = spin_half_rotation(q)
        out = out.with_data(np.einsum("st,ntu,vu->nsv", u, out.data, u.conj()))
    return out


def eigenvalue_error(system, tag: str, window: float = 10.0) -> tuple[float, float]:
    """Largest |ours − DFT code's| eigenvalue (eV) at the run's k-points: (within ``window`` eV of E_F, all bands).

    E_F is the code's own when known, else ours from the electron count on the run's mesh.
    """
    k, ref = system.reference_eigenvalues[tag]
    ours = system.bands(tag, k)
    ef = system.fermi_ev.get(tag)
    if ef is None:
        ef = system.fermi_from_bands(system.bands(tag, system.kpoints.frac), system.kpoints.weights)
    nb = min(ref.shape[-1], ours.shape[-1])
    d = np.abs(ours[..., :nb] - ref[..., :nb])
    win = np.abs(ref[..., :nb] - ef) < window
    if not win.any():
        raise ValueError(f"no reference eigenvalue within {window} eV of E_F = {ef:.3f} eV")
    return float(d[win].max()), float(d.max())


def rotate_system(system, q: np.ndarray):
    """A copy of ``system`` rigidly rotated by q (r -> q r), every matrix rotated with Wigner-D (and SU(2))."""
    import copy

    out = copy.copy(system)
    out.positions = system.positions @ np.asarray(q).T
    out.lattice = system.lattice @ np.asarray(q).T
    out.matrices = {k: rotate_matrix(m, system.kinds, system.bases, q) for k, m in system.matrices.items()}
    return out


def assert_hamiltonian_equivariant(predict, system, n_rotations: int = 2, rtol: float = 1e-5, seed: int = 0,
                                   inversion: bool = True) -> None:
    """Check that ``predict(system) -> BlockSparse`` commutes with rotations (and inversion) of the structure.

    For each random orthogonal Q: predict(rotate(system, Q)) must equal rotate(predict(system), Q)
    to ``rtol`` relative to the largest entry. Raises AssertionError with the worst deviation.
    """
    rng = np.random.default_rng(seed)
    ref = predict(system)
    scale = float(np.max(np.abs(ref.data)))
    qs = []
    for _ in range(n_rotations):
        a = rng.normal(size=(3, 3))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        qs.append(q)
    if inversion:
        qs.append(-qs[0])
    for q in qs:
        got = predict(rotate_system(system, q))
        want = rotate_matrix(ref, system.kinds, system.bases, q)
        err = got.max_abs_diff(want)
        if err > rtol * scale:
            raise AssertionError(f"not equivariant under Q (det {np.linalg.det(q):+.0f}): max deviation {err:.3e} "
                                 f"(relative {err / scale:.2e} > {rtol:.1e})")


def orbital_convention_residual(system, min_norm: float = 1e-3) -> tuple[float, int]:
    """How far the overlap blocks are from the canonical real-harmonic convention.

    For an s shell on atom i and a shell of angular momentum l on atom j at bond vector
    d = τ_j + R − τ_i, the overlap <s_i| φ_j,lm> is a radial function of |d| times Y_lm(d̂):
    in the canonical (e3nn) convention the (2l+1)-vector S[s, l-shell] is parallel to e3nn's
    Y_l(d̂). Returns (largest relative perpendicular part, number of vectors checked) over all
    off-site blocks of S whose vector norm exceeds ``min_norm``. A wrong order or sign of any m
    gives O(1); the right convention gives round-off.
    """
    from .core.sph import e3nn_harmonics

    s = system.matrices["S"]
    ei, ej, R, off, data = s.full_blocks()
    worst, count = 0.0, 0
    bonds = system.bond_vectors(ei, ej, R)
    for e in range(len(ei)):
        i, j = int(ei[e]), int(ej[e])
        d = bonds[e]
        if np.linalg.norm(d) < 1e-6:
            continue
        bi, bj = system.bases[system.kinds[i]], system.bases[system.kinds[j]]
        blk = data[off[e] : off[e + 1]].reshape(bi.norb, bj.norb)
        for sh_i, sl_i in zip(bi.shells, bi.shell_slices()):
            if sh_i.l != 0:
                continue
            for sh_j, sl_j in zip(bj.shells, bj.shell_slices()):
                if sh_j.l == 0:
                    continue
                v = blk[sl_i, sl_j][0]
                nv = np.linalg.norm(v)
                if nv < min_norm:
                    continue
                y = e3nn_harmonics(sh_j.l, d[None])[0]
                y = y / np.linalg.norm(y)
                worst = max(worst, float(np.linalg.norm(v - (v @ y) * y) / nv))
                count += 1
    return worst, count
