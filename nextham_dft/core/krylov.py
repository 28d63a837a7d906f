"""A network-free prediction of the converged density from three Kohn–Sham steps: the Krylov secant.

In linear response around the atoms' density the first step's output is ρ_atoms + Δρ1 + J·x for an input
ρ_atoms + x, J = χ0·K the density response (K the Hartree + xc kernel, ``hxc.hxc_kernel_action``), and the
converged change is Δρ* = (1 − J)⁻¹ Δρ1. Two probe steps measure J on the Krylov vectors:

    u  = ρ_out(ρ_atoms + β Δρ1) − ρ_atoms − Δρ1  = β J Δρ1,
    u2 = (ρ_out(ρ_atoms + β u) − ρ_atoms − Δρ1) / β = J u = β J² Δρ1.

J is self-adjoint and ≤ 0 in the metric of K, so the Gram matrix of (Δρ1, u, u2) in that metric gives five
moments m_k = ⟨Δρ1, J^k Δρ1⟩_K of J's spectrum on Δρ1 (k = 0..4). A spectrum of three nodes, one fixed at 0 (the
parts the crystal does not screen) and two, λ1 and λ2, fitted to m1..m4 (Gauss quadrature of the measure λ·μ), has
the fixed point

    Δρ* = Δρ1 + p1 λ1/(1 − λ1) + p2 λ2/(1 − λ2),   p_i the parts of Δρ1 on the nodes (from JΔρ1 and J²Δρ1),

which is exact for such a spectrum (tested). Where the moments are not those of a positive three-node spectrum
(the response is not linear at the probes' size, or K is not positive on them), the two-node form from m1, m2 is
used, Δρ1 + u/(β(1 − m2/m1)), and where even that fails, Δρ1 + u/β. On the bundled data's 120 train + val
crystals (no network, no training): shifted band MAE 9.43 / 1.88 meV (mean / median), H after μS 0.304 meV
(docs/density-model.md). Cost: the first step and two probes, three diagonalisations and two H[ρ], then H[ρ] of the
result. Densities e/Å³ on the grid of a ``scf.SelfConsistency``; β dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hxc import hxc_kernel_action
from .scf import SelfConsistency


#: relative size of the moments' Hankel determinant below which the spectrum is taken to have one screened node
HANKEL_RTOL = 1e-9


@dataclass
class KrylovSecant:
    """density: ρ = ρ_atoms + c0 Δρ1 + c1 u + c2 u2 (e/Å³, on the grid); coefficients: (c0, c1, c2); nodes: the
    fitted eigenvalues of J (two for the three-node form, one for the two-node form, none for the fallback);
    form: "three-node", "two-node" or "first-order"; steps: the (ρ_in, ρ_out) pairs of the three Kohn–Sham steps."""

    density: np.ndarray
    coefficients: tuple[float, float, float]
    nodes: tuple[float, ...]
    form: str
    steps: tuple[tuple[np.ndarray, np.ndarray], ...]

    def report(self) -> dict:
        """{form, coefficients, nodes}: what a prediction's report.json says of the secant."""
        return {"form": self.form, "coefficients": list(self.coefficients), "nodes": list(self.nodes)}


def radau_factor(du: float, uu: float, beta: float) -> float | None:
    """b of the secant density Δρ1 + b·u for a spectrum of two nodes, one at 0 and λ1 = m2/m1 = ⟨u, u⟩/(β⟨Δρ1, u⟩),
    from the pair's inner products du = ⟨Δρ1, u⟩ and uu = ⟨u, u⟩ in a metric where J is self-adjoint:
    b = 1/(β(1 − λ1)) = 1/(β − uu/du), in (0, 1/β]. None where they are not those of a screening (du ≥ 0: the
    response amplifies; uu ≤ 0: the metric is not positive on u)."""
    return 1.0 / (beta - uu / du) if du < 0 < uu else None


def secant_coefficients(gram: np.ndarray, beta: float) -> tuple[tuple[float, float, float], tuple[float, ...], str]:
    """(c0, c1, c2), nodes, form of the Krylov secant Δρ1·c0 + u·c1 + u2·c2 from the (3, 3) Gram matrix of
    (Δρ1, u, u2) in the kernel's metric (module docstring)."""
    g = np.asarray(gram, dtype=float)
    m1, m2 = g[0, 1] / beta, g[1, 1] / beta**2
    m3, m4 = g[1, 2] / beta**2, g[2, 2] / beta**2
    # two nodes need a measure λ·μ of two points at least: its Hankel determinant m1·m3 − m2² > 0 (Cauchy–Schwarz),
    # not zero to rounding (one screening constant, where u2 is a multiple of u)
    two_points = m1 * m3 - m2 * m2 > HANKEL_RTOL * abs(m1 * m3)
    try:  # Gauss quadrature of the measure λ·μ from its moments m1..m4: the nodes are the roots of λ² + a1 λ + a0
        if not two_points:
            raise np.linalg.LinAlgError("one node")
        a0, a1 = np.linalg.solve([[m1, m2], [m2, m3]], [-m3, -m4])
        disc = a1 * a1 - 4.0 * a0
        if disc > 0:
            l1, l2 = (-a1 - np.sqrt(disc)) / 2.0, (-a1 + np.sqrt(disc)) / 2.0
            if l1 < 0 and l2 < 0:
                c1 = (l2 / (1 - l1) - l1 / (1 - l2)) / (l2 - l1) / beta
                c2 = (1 / (1 - l2) - 1 / (1 - l1)) / (l2 - l1) / beta
                return (1.0, float(c1), float(c2)), (float(l1), float(l2)), "three-node"
    except np.linalg.LinAlgError:
        pass
    b = radau_factor(g[0, 1], g[1, 1], beta)  # two nodes, one at 0 (density_train's "radau-hxc")
    if b is not None:
        return (1.0, float(b), 0.0), (float(m2 / m1),), "two-node"
    return (1.0, 1.0 / beta, 0.0), (), "first-order"


def krylov_secant(sc: SelfConsistency, beta: float = 0.3,
                  first: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> KrylovSecant:
    """The Krylov secant density of the system of ``sc`` (module docstring): three diagonalisations on its k-mesh and
    two H[ρ]. ``first``: the (ρ_in, ρ_out) pairs of the first step and of the first probe when already taken with
    this β (a density model's probe step, ``density_train.first_step``); then only the second probe is computed."""
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"the probe fraction β = {beta} must lie in (0, 1]")
    if first is None:
        rho1, _ = sc.density(sc.h0)
        d1 = rho1 - sc.rho_atoms
        probe1 = sc.rho_atoms + beta * d1
        rho2, _ = sc.density(sc.hamiltonian(probe1))
    else:
        (start, rho1), (probe1, rho2) = first
        d1 = rho1 - sc.rho_atoms
        if not (np.allclose(start, sc.rho_atoms) and np.allclose(probe1, sc.rho_atoms + beta * d1)):
            raise ValueError(f"the given steps are not the first step and a probe at β = {beta} from the atoms' density")
    u = rho2 - rho1
    probe2 = sc.rho_atoms + beta * u
    rho3, _ = sc.density(sc.hamiltonian(probe2))
    u2 = (rho3 - rho1) / beta
    vectors = (d1, u, u2)
    kernel = [hxc_kernel_action(v, sc.rho_atoms, sc.rho_core, sc.lattice, sc.functional) for v in vectors]
    gram = np.array([[float((a * k).sum() * sc.dv) for k in kernel] for a in vectors])
    gram = 0.5 * (gram + gram.T)
    coefficients, nodes, form = secant_coefficients(gram, beta)
    delta = sum(c * v for c, v in zip(coefficients, vectors))
    return KrylovSecant(sc.rho_atoms + delta - delta.mean(), coefficients, nodes, form,
                        ((sc.rho_atoms, rho1), (probe1, rho2), (probe2, rho3)))
