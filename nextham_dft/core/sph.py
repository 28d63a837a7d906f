"""Real-spherical-harmonic conventions.

The canonical convention of the package is e3nn's: for angular momentum l the
2l+1 real functions are ordered as e3nn's ``o3.spherical_harmonics(l, ·)`` and an
atom-pair block transforms under a rotation Q as ``D_l1(Q) B D_l2(Q)^T`` with
``e3nn.o3.Irrep(l, (-1)**l).D_from_matrix(Q)``. For l = 1 that is (x, y, z).

e3nn's harmonics are the standard *tesseral* harmonics T_lm (z polar axis,
positive leading coefficients, no Condon–Shortley phase) evaluated on the
cyclically permuted vector (z, x, y). DFT codes use T_lm with a code-specific
order and signs; an adapter declares that as data (:class:`OrbitalConvention`)
and :func:`code_to_canonical` turns it into the orthogonal matrix
``Y_canonical = M @ Y_code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.special import sph_harm_y

LMAX_SUPPORTED = 5


def tesseral_harmonics(l: int, xyz: np.ndarray) -> np.ndarray:
    """Orthonormal real tesseral harmonics T_lm on unit vectors.

    xyz: (n, 3) Cartesian (need not be normalised). Returns (n, 2l+1) with
    columns m = -l..l; T_l,m>0 ∝ cos(mφ), T_l,m<0 ∝ sin(|m|φ), all with positive
    leading coefficient (T_1 = (y, z, x) · sqrt(3/4π)). l ≤ 3 from their Cartesian
    polynomials (the orbitals' hot path), higher l from scipy's complex harmonics.
    """
    xyz = np.asarray(xyz, dtype=float)
    if l <= 3:
        return _tesseral_polynomial(l, xyz)
    return _tesseral_scipy(l, xyz)


def _tesseral_polynomial(l: int, xyz: np.ndarray) -> np.ndarray:
    """T_lm (m = -l..l) for l ≤ 3 from the Cartesian polynomials of the unit vector."""
    u = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    pi = np.pi
    if l == 0:
        return np.full((len(u), 1), 0.5 / np.sqrt(pi))
    if l == 1:
        return np.sqrt(3.0 / (4.0 * pi)) * np.stack([y, z, x], 1)
    if l == 2:
        c = 0.5 * np.sqrt(15.0 / pi)
        return np.stack([c * x * y, c * y * z, 0.25 * np.sqrt(5.0 / pi) * (3.0 * z * z - 1.0), c * x * z,
                         0.5 * c * (x * x - y * y)], 1)
    c3, c2, c1 = 0.25 * np.sqrt(35.0 / (2.0 * pi)), np.sqrt(105.0 / pi), 0.25 * np.sqrt(21.0 / (2.0 * pi))
    return np.stack([c3 * y * (3.0 * x * x - y * y), 0.5 * c2 * x * y * z, c1 * y * (5.0 * z * z - 1.0),
                     0.25 * np.sqrt(7.0 / pi) * (5.0 * z**3 - 3.0 * z), c1 * x * (5.0 * z * z - 1.0),
                     0.25 * c2 * z * (x * x - y * y), c3 * x * (x * x - 3.0 * y * y)], 1)


def _tesseral_scipy(l: int, xyz: np.ndarray) -> np.ndarray:
    """T_lm (m = -l..l) for any l from scipy's complex harmonics (Condon–Shortley phase removed)."""
    r = np.linalg.norm(xyz, axis=1)
    theta = np.arccos(np.clip(xyz[:, 2] / r, -1.0, 1.0))
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    out = np.empty((xyz.shape[0], 2 * l + 1))
    for m in range(-l, l + 1):
        y = sph_harm_y(l, abs(m), theta, phi)  # includes the Condon–Shortley phase
        if m > 0:
            out[:, m + l] = np.sqrt(2.0) * (-1) ** m * y.real
        elif m < 0:
            out[:, m + l] = np.sqrt(2.0) * (-1) ** m * y.imag
        else:
            out[:, l] = y.real
    return out


def e3nn_harmonics(l: int, xyz: np.ndarray) -> np.ndarray:
    """e3nn's real spherical harmonics (orthonormal), computed without torch.

    Equal to e3nn ``spherical_harmonics(l, xyz, normalize=True,
    normalization='integral')``; a test checks it against e3nn itself.
    """
    xyz = np.asarray(xyz, dtype=float)
    return tesseral_harmonics(l, xyz[:, [2, 0, 1]])


@cache
def tesseral_to_e3nn(l: int) -> np.ndarray:
    """Orthogonal (2l+1, 2l+1) matrix U with e3nn_Y = U @ T (T in order m = -l..l)."""
    if not 0 <= l <= LMAX_SUPPORTED:
        raise ValueError(f"angular momentum l={l} is not supported (0..{LMAX_SUPPORTED})")
    rng = np.random.default_rng(12345 + l)
    pts = rng.normal(size=(8 * (2 * l + 1), 3))
    t = tesseral_harmonics(l, pts)
    e = e3nn_harmonics(l, pts)
    u_t, *_ = np.linalg.lstsq(t, e, rcond=None)  # e = t @ u_t
    u = u_t.T
    u[np.abs(u) < 1e-12] = 0.0
    return u


@dataclass(frozen=True)
class OrbitalConvention:
    """A code's real-harmonic convention, declared as data.

    ``table[l]`` lists, in the code's order of the 2l+1 functions of angular
    momentum l, the pair (m, sign) such that code function k = sign · T_l,m.
    """

    name: str
    table: dict[int, tuple[tuple[int, int], ...]]

    def lmax(self) -> int:
        return max(self.table)


@cache
def _code_to_canonical_cached(name: str, l: int, entries: tuple[tuple[int, int], ...]) -> np.ndarray:
    c = np.zeros((2 * l + 1, 2 * l + 1))  # code = C @ T
    for k, (m, sign) in enumerate(entries):
        c[k, m + l] = sign
    if not np.allclose(c @ c.T, np.eye(2 * l + 1)):
        raise ValueError(f"convention {name}: l={l} table is not a signed permutation")
    return tesseral_to_e3nn(l) @ c.T


def code_to_canonical(conv: OrbitalConvention, l: int) -> np.ndarray:
    """Orthogonal M with canonical = M @ code for the functions of angular momentum l.

    A matrix block transforms as B_canonical = M_l1 @ B_code @ M_l2.T.
    """
    if l not in conv.table:
        raise ValueError(f"convention {conv.name} declares no table for l={l}")
    return _code_to_canonical_cached(conv.name, l, conv.table[l])


def spin_half_rotation(q: np.ndarray) -> np.ndarray:
    """SU(2) matrix of a proper rotation Q (3×3), acting on (up, down) spinors along z.

    Returns U = exp(-i θ n·σ / 2) for Q = rotation by θ about n. For an improper
    Q the proper part −Q is used (spin is a pseudo-vector, even under inversion).
    """
    q = np.asarray(q, dtype=float)
    if np.linalg.det(q) < 0:
        q = -q
    # quaternion from rotation matrix (robust branch selection)
    tr = np.trace(q)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (q[2, 1] - q[1, 2]) / s, (q[0, 2] - q[2, 0]) / s, (q[1, 0] - q[0, 1]) / s
    elif q[0, 0] > q[1, 1] and q[0, 0] > q[2, 2]:
        s = 2.0 * np.sqrt(1.0 + q[0, 0] - q[1, 1] - q[2, 2])
        w, x, y, z = (q[2, 1] - q[1, 2]) / s, 0.25 * s, (q[0, 1] + q[1, 0]) / s, (q[0, 2] + q[2, 0]) / s
    elif q[1, 1] > q[2, 2]:
        s = 2.0 * np.sqrt(1.0 + q[1, 1] - q[0, 0] - q[2, 2])
        w, x, y, z = (q[0, 2] - q[2, 0]) / s, (q[0, 1] + q[1, 0]) / s, 0.25 * s, (q[1, 2] + q[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + q[2, 2] - q[0, 0] - q[1, 1])
        w, x, y, z = (q[1, 0] - q[0, 1]) / s, (q[0, 2] + q[2, 0]) / s, (q[1, 2] + q[2, 1]) / s, 0.25 * s
    # exp(-i θ/2 n·σ) = cos(θ/2) − i sin(θ/2) n·σ, with (w, x, y, z) = (cos θ/2, sin θ/2 n)
    return np.array([[w - 1j * z, -1j * x - y], [-1j * x + y, w + 1j * z]])


#: Pauli matrices σx, σy, σz, shape (3, 2, 2).
PAULI = np.array(
    [[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=complex
)
