"""Hartree and exchange–correlation potentials of a density on a uniform periodic grid of the cell.

H(0) and the converged H differ only by the density-dependent local part of the Kohn–Sham potential:

    ΔV(r) = V_H[ρ − ρ_atoms](r) + v_xc[ρ + ρ_core](r) − v_xc[ρ_atoms + ρ_core](r),

with ρ_atoms the superposition of the pseudopotentials' atomic valence densities (the density H(0) is
built from) and ρ_core their partial core densities (non-linear core correction). Both potentials are
computed here with FFTs on the grid points origin + (n/N)·A, as plane-wave and LCAO codes do:
V_H(G) = 4π e² ρ(G) / G² (G = 0 left out: the neutralising background, a constant that moves every
band alike), and PBE (Perdew, Burke, Ernzerhof, PRL 77, 3865 (1996); the PW92 uniform-gas correlation)
in its unpolarised form, the functional of the bundled data's pseudopotentials. The xc potential is
v = ∂e/∂n − ∇·(2 ∂e/∂σ ∇n) (σ = |∇n|²), the partial derivatives of the energy density written out
analytically, the gradient and divergence by FFT. As in Quantum ESPRESSO and ABACUS, the local part is
skipped below n = 1e-10 and the gradient correction below n = 1e-6 bohr⁻³ or σ = 1e-10 bohr⁻⁸.

Units: densities e/Å³, lattice Å, potentials eV (PBE itself is evaluated in Hartree atomic units).
"""

from __future__ import annotations

import numpy as np

from .units import BOHR_TO_ANG, COULOMB_EV_ANG, HARTREE_TO_EV

#: functionals this module evaluates (names as the pseudopotential files spell them, upper case)
FUNCTIONALS = ("PBE",)

_RHO_MIN, _GC_RHO_MIN, _GC_SIGMA_MIN = 1e-10, 1e-6, 1e-10  # bohr⁻³, bohr⁻³, bohr⁻⁸

# PBE exchange, PW92 correlation (unpolarised) and PBE correlation parameters
_KAPPA, _MU = 0.804, 0.2195149727645171
_PW92 = (0.031091, 0.21370, 7.5957, 3.5876, 1.6382, 0.49294)
_BETA = 0.06672455060314922
_GAMMA = (1.0 - np.log(2.0)) / np.pi**2


def reciprocal_grid(lattice: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N1, N2, N3, 3) the reciprocal vectors G (1/length unit of ``lattice``) of the FFT frequencies
    of a grid of ``shape`` points along the lattice vectors (rows of ``lattice``)."""
    recip = 2.0 * np.pi * np.linalg.inv(np.asarray(lattice, dtype=float)).T
    f = [np.fft.fftfreq(n, 1.0 / n) for n in shape]
    return np.stack(np.meshgrid(*f, indexing="ij"), -1) @ recip


def hartree_potential(rho: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """V_H (eV) of the density ``rho`` (e/Å³) on the periodic grid; the G = 0 term (its mean) is zero."""
    G = reciprocal_grid(lattice, rho.shape)
    g2 = (G * G).sum(-1)
    g2[0, 0, 0] = 1.0
    vk = 4.0 * np.pi * COULOMB_EV_ANG * np.fft.fftn(rho) / g2
    vk[0, 0, 0] = 0.0
    return np.fft.ifftn(vk).real


def _pw92(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PW92 correlation energy per electron ε_c (Ha) of the unpolarised uniform gas and dε_c/dn."""
    a, a1, b1, b2, b3, b4 = _PW92
    rs = (3.0 / (4.0 * np.pi * n)) ** (1.0 / 3.0)
    sq = np.sqrt(rs)
    q = 2.0 * a * (b1 * sq + b2 * rs + b3 * rs * sq + b4 * rs * rs)
    dq = 2.0 * a * (0.5 * b1 / sq + b2 + 1.5 * b3 * sq + 2.0 * b4 * rs)
    log = np.log1p(1.0 / q)
    ec = -2.0 * a * (1.0 + a1 * rs) * log
    dec_drs = -2.0 * a * a1 * log + 2.0 * a * (1.0 + a1 * rs) * dq / (q * q + q)
    return ec, dec_drs * (-rs / (3.0 * n))


def lda_xc(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slater exchange + PW92 correlation: energy per volume e (Ha/bohr³) and ∂e/∂n (Ha), n in bohr⁻³ (> 0)."""
    cx = -0.75 * (3.0 / np.pi) ** (1.0 / 3.0)
    ec, dec = _pw92(n)
    n13 = np.cbrt(n)
    return cx * n * n13 + n * ec, (4.0 / 3.0) * cx * n13 + ec + n * dec


def pbe_xc(n: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PBE exchange–correlation, unpolarised: energy per volume e (Ha/bohr³), ∂e/∂n (Ha) and ∂e/∂σ
    (Ha·bohr⁵); n bohr⁻³ (> 0), sigma = |∇n|² bohr⁻⁸."""
    cx = -0.75 * (3.0 / np.pi) ** (1.0 / 3.0)
    n13 = np.cbrt(n)
    ex_lda = cx * n * n13
    # exchange: s² = σ / (2 k_F n)², F_x(s²)
    sa = 1.0 / (4.0 * (3.0 * np.pi**2) ** (2.0 / 3.0))
    s2 = sa * sigma / (n13**8)
    den = 1.0 + _MU * s2 / _KAPPA
    fx = 1.0 + _KAPPA - _KAPPA / den
    dfx = _MU / (den * den)
    ex = ex_lda * fx
    dex_dn = (4.0 / 3.0) * cx * n13 * fx + ex_lda * dfx * (-8.0 / 3.0) * s2 / n
    dex_ds = ex_lda * dfx * sa / (n13**8)
    # correlation: PW92 + H(ε_c, t²), t² = σ / (2 k_s n)², k_s² = 4 k_F / π
    ec, dec_dn = _pw92(n)
    tb = np.pi / (16.0 * (3.0 * np.pi**2) ** (1.0 / 3.0))
    t2 = tb * sigma / (n13**7)
    ee = np.exp(-ec / _GAMMA)
    aa = _BETA / _GAMMA / (ee - 1.0)
    daa_dec = aa * aa * ee / _BETA
    y = aa * t2
    poly = 1.0 + y + y * y
    pp = (1.0 + y) / poly
    dpp_dy = -y * (2.0 + y) / (poly * poly)
    x = _BETA / _GAMMA * t2 * pp
    hh = _GAMMA * np.log1p(x)
    dh_dx = _GAMMA / (1.0 + x)
    dh_dt2 = dh_dx * _BETA / _GAMMA * (pp + y * dpp_dy)
    dh_daa = dh_dx * _BETA / _GAMMA * t2 * t2 * dpp_dy
    dh_dn = dh_dt2 * (-7.0 / 3.0) * t2 / n + dh_daa * daa_dec * dec_dn
    e = ex + n * (ec + hh)
    de_dn = dex_dn + ec + hh + n * (dec_dn + dh_dn)
    de_ds = dex_ds + n * dh_dt2 * tb / (n13**7)
    return e, de_dn, de_ds


def _density_and_gradient(rho: np.ndarray, lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n (bohr⁻³), ∇n (3, …; bohr⁻⁴) by FFT, and the reciprocal vectors (bohr⁻¹) of the grid."""
    n = np.asarray(rho, dtype=float) * BOHR_TO_ANG**3
    G = reciprocal_grid(np.asarray(lattice, dtype=float) / BOHR_TO_ANG, n.shape)
    nk = np.fft.fftn(n)
    grad = np.stack([np.fft.ifftn(1j * G[..., c] * nk).real for c in range(3)])
    return n, grad, G


def _masked_parts(n: np.ndarray, sigma: np.ndarray):
    """(e, ∂e/∂n, ∂e/∂σ) with the codes' thresholds: PBE where n > 1e-6 and σ > 1e-10 (atomic units),
    its local (LDA) part alone where only n > 1e-10, zero elsewhere."""
    local = n > _RHO_MIN
    gc = (n > _GC_RHO_MIN) & (sigma > _GC_SIGMA_MIN)  # a subset of ``local``
    el, dl = lda_xc(np.where(local, n, 1.0))
    ep, dpn, dps = pbe_xc(np.where(gc, n, 1.0), np.where(gc, sigma, 1.0))
    e = np.where(gc, ep, np.where(local, el, 0.0))
    de_dn = np.where(gc, dpn, np.where(local, dl, 0.0))
    return e, de_dn, np.where(gc, dps, 0.0)


def _check_functional(functional: str) -> None:
    if functional.upper() not in FUNCTIONALS:
        raise ValueError(f"exchange-correlation functional {functional!r} is not supported (supported: "
                         f"{', '.join(FUNCTIONALS)})")


def xc_potential(rho: np.ndarray, lattice: np.ndarray, functional: str = "PBE") -> np.ndarray:
    """v_xc (eV) of the total density ``rho`` (e/Å³, valence plus partial core) on the periodic grid."""
    _check_functional(functional)
    n, grad, G = _density_and_gradient(rho, lattice)
    _e, de_dn, de_ds = _masked_parts(n, (grad * grad).sum(0))
    flux = 2.0 * de_ds * grad
    div = sum(np.fft.ifftn(1j * G[..., c] * np.fft.fftn(flux[c])).real for c in range(3))
    return (de_dn - div) * HARTREE_TO_EV


def xc_energy(rho: np.ndarray, lattice: np.ndarray, functional: str = "PBE") -> float:
    """E_xc (eV) of the density ``rho`` (e/Å³) on the periodic grid, with the same thresholds as
    :func:`xc_potential` (whose functional derivative it is)."""
    _check_functional(functional)
    n, grad, _G = _density_and_gradient(rho, lattice)
    e, _dn, _ds = _masked_parts(n, (grad * grad).sum(0))
    dv = abs(np.linalg.det(np.asarray(lattice) / BOHR_TO_ANG)) / n.size
    return float(e.sum() * dv * HARTREE_TO_EV)


def hxc_change(rho: np.ndarray, rho_atoms: np.ndarray, rho_core: np.ndarray, lattice: np.ndarray,
               functional: str = "PBE") -> np.ndarray:
    """ΔV (eV) = V_H[ρ − ρ_atoms] + v_xc[ρ + ρ_core] − v_xc[ρ_atoms + ρ_core] on the grid (all e/Å³):
    the change of the Kohn–Sham potential from the atoms' superposed density to ``rho``."""
    return (hartree_potential(rho - rho_atoms, lattice) + xc_potential(rho + rho_core, lattice, functional)
            - xc_potential(rho_atoms + rho_core, lattice, functional))


def hxc_kernel_action(x: np.ndarray, rho0: np.ndarray, rho_core: np.ndarray, lattice: np.ndarray,
                      functional: str = "PBE", step: float = 1e-3) -> np.ndarray:
    """K·x (eV): the Hartree + xc kernel at the density ``rho0`` (valence, e/Å³; ``rho_core`` its partial core)
    applied to a density change x (e/Å³), V_H[x] + f_xc[ρ0]·x, the xc part as the central difference of v_xc along
    x with the change's largest value scaled to ``step`` e/Å³ (so every part is the functional's own, gradients
    included). The kernel that makes the density response J = χ0·K self-adjoint."""
    peak = float(np.abs(x).max())
    if peak == 0.0:
        return np.zeros_like(x)
    s = step / peak
    total = rho0 + rho_core
    dv = xc_potential(total + s * x, lattice, functional) - xc_potential(total - s * x, lattice, functional)
    return hartree_potential(x, lattice) + dv / (2.0 * s)
