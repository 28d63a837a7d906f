"""Self-consistent completion of a zeroth step: the converged H from H(0), S and the atomic densities.

H(0) is the Kohn–Sham Hamiltonian of the superposed atomic densities ρ_atoms. The SCF changes only the
density-dependent local part of the potential, so for any density ρ

    H[ρ](R)_ij = H(0)(R)_ij + ⟨φ_i(r − τ_i)| ΔV[ρ](r) |φ_j(r − τ_j − R)⟩,
    ΔV[ρ] = V_H[ρ − ρ_atoms] + v_xc[ρ + ρ_core] − v_xc[ρ_atoms + ρ_core]        (:mod:`.hxc`),

the kinetic and non-local (spin–orbit included) terms being those of H(0). Iterating ρ → H[ρ] → the
density of H[ρ]'s occupied states on the run's full k-mesh, with Pulay mixing of Kerker-preconditioned
residuals, reaches the density at which ρ_out = ρ_in, where H[ρ] is the converged Hamiltonian of the DFT
code up to the quadrature of the grid (on the bundled data's 21 test crystals: H MAE after the rigid
shift 0.065 meV per entry, where H(0)'s is 4.19; docs/scf-completion.md). Starting from a predicted H
(the density of its occupied states) it needs fewer iterations than from the atoms.

Grid: uniform, step ``spacing`` (Å, at most) along the lattice vectors, anchored at one atom chosen
independently of the atoms' numbering (:func:`.potential.origin_atoms`, by element and fractional
coordinates). Permuting the atoms changes nothing; a rotation or inversion of the crystal keeps its
fractional coordinates, so the grid rotates with it and H transforms exactly (tested); a translation
may change which atom anchors, so it holds to the quadrature's accuracy. Densities e/Å³,
potentials and H eV. Magnetic runs are not handled (the magnetisation is taken to be zero: ΔV acts on the
spin-independent part alone, as in the non-magnetic runs this serves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import MissingDataError, UnsupportedError
from .atomic import require_atomic_densities, superposition_on_grid
from .blocks import BlockSparse
from .density import GridOrbitals, density_matrix, density_on_grid
from .gaussians import GaussianBasis, kept_basis_blocks
from .hxc import FUNCTIONALS, hxc_change, reciprocal_grid
from .kspace import FixedOverlap
from .potential import _grid_integrals, _grid_shape, origin_atoms


@dataclass
class ScfSettings:
    """spacing: grid step (Å, at most); tol: convergence threshold on ∫|ρ_out − ρ_in| / N_e; max_iter:
    iterations at most; beta: mixing fraction; kerker_q0: Kerker wavevector (1/Å; 0 turns it off);
    history: residuals Pulay mixing keeps; mix_last: on convergence, mix the last diagonalisation's output in
    too (one more Pulay step and H[ρ], no diagonalisation) rather than return the H it was computed from;
    prior_history: start Pulay's history with the steps a density model already took (``complete_scf``'s
    ``prior``)."""

    spacing: float = 0.15
    tol: float = 1e-5
    max_iter: int = 60
    beta: float = 0.4
    kerker_q0: float = 0.8
    history: int = 8
    mix_last: bool = True
    prior_history: bool = False


@dataclass
class ScfResult:
    """hamiltonian: the self-consistent H on H(0)'s and S's blocks, in H(0)'s spin layout (eV); converged: the
    residual fell below the threshold; residuals: ∫|ρ_out − ρ_in| / N_e per iteration; fermi_ev: E_F of
    the last diagonalisation; seconds: wall time; density: the input density of ``hamiltonian`` (e/Å³ on the
    grid); steps: the (ρ_in, ρ_out) pairs of the last ``ScfSettings.history`` iterations' diagonalisations (those
    Pulay's history holds: a long SCF on a big grid keeps no more)."""

    hamiltonian: BlockSparse
    converged: bool
    residuals: list[float] = field(default_factory=list)
    fermi_ev: float = float("nan")
    seconds: float = 0.0
    density: np.ndarray | None = None
    steps: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return len(self.residuals)


def completion_problem(system) -> Exception | None:
    """Why the completion cannot run on ``system`` (the error to raise, its message one line), or None:
    no pseudopotential densities, a functional other than those :mod:`.hxc` implements, collinear spin,
    or no H(0) or S."""
    try:
        dens = require_atomic_densities(system)
    except MissingDataError as exc:
        return exc
    functionals = {d.functional for d in dens}
    if len(functionals) != 1:
        return UnsupportedError(f"the pseudopotentials were made with different functionals ({sorted(functionals)})")
    if not functionals <= set(FUNCTIONALS):
        return UnsupportedError(f"the self-consistent completion implements {', '.join(FUNCTIONALS)}; the "
                                f"pseudopotentials were made with {functionals.pop() or 'an unnamed functional'}")
    if system.spin_mode == "collinear":
        return UnsupportedError("the self-consistent completion handles non-spin-polarised and non-magnetic "
                                "spin–orbit runs, not collinear spin (nspin 2)")
    missing = [tag for tag in ("H0", "S") if tag not in system.matrices]
    if missing:
        return MissingDataError(f"the self-consistent completion needs the run's {' and '.join(missing)} matrix")
    return None


class SelfConsistency:
    """The map ρ → H[ρ] → ρ_out of one system (see the module docstring), its grid set up once: the
    orbitals' values on it (and where their pairs lie among S's entries) are kept between iterations when
    they fit in ``keep_bytes``, and so are S(k)'s factors at the k-points."""

    def __init__(self, system, spacing: float = 0.15, keep_bytes: int = 2 << 30) -> None:
        problem = completion_problem(system)
        if problem is not None:
            raise problem
        self.system = system
        self.functional = system.atomic_densities[0].functional
        self.spacing = float(spacing)
        self.lattice = np.asarray(system.lattice, dtype=float)
        self.shape = _grid_shape(self.lattice, self.spacing)
        a0 = origin_atoms(system, 1)[0]
        self.origin = (system.frac_positions[a0] % 1.0) @ self.lattice
        self.dv = abs(np.linalg.det(self.lattice)) / np.prod(self.shape)
        self.s = system.matrices["S"]
        self.h0 = _on_union(system.matrices["H0"], self.s)
        # where each entry of S's blocks lies among H(0)'s (found once; ΔV's matrix is added there)
        at = self.s.with_data(np.arange(1.0, len(self.s.data) + 1.0)).aligned_to(self.h0).data
        self._s_in_h0 = (np.nonzero(at)[0], at[at > 0].astype(np.int64) - 1)
        self.nelec = system.require_nelec()
        mesh = system.full_kmesh()
        self.kfrac, self.kweights = time_reversal_half(mesh.frac, mesh.weights)
        spinor = self.h0.spin == "spinor"
        dim = int(np.sum(self.s.norb)) * (2 if spinor else 1)
        # S(k)'s factors, formed once for every iteration's diagonalisation, when they fit in keep_bytes
        self.overlap = (FixedOverlap(self.s, self.kfrac, spinor) if 16 * dim * dim * len(self.kfrac) <= keep_bytes
                        else None)
        self.orbitals = GridOrbitals(system, self.shape, self.origin, keep_bytes=keep_bytes)
        rho, self.rho_core = superposition_on_grid(system, self.shape, self.origin, ("valence", "core"))
        self.rho_atoms = rho * self.nelec / (rho.sum() * self.dv)  # as the codes do: the cell's electron count
        self.keep_bytes = int(keep_bytes)
        self._gaussians: list[tuple[np.ndarray, GaussianBasis, list | None]] = []

    def gaussian_blocks(self, sites, basis: GaussianBasis) -> list | None:
        """``core.gaussians.kept_basis_blocks`` of Gaussians ``basis`` on ``sites`` (lattice and positions, Å) on
        this grid, computed once for the fits and densities of a prediction (None when they do not fit in
        a quarter of ``keep_bytes``: then each computes its own)."""
        key = np.concatenate([np.asarray(sites.lattice, dtype=float), np.asarray(sites.positions, dtype=float)])
        for k, b, kept in self._gaussians:
            if b == basis and k.shape == key.shape and np.array_equal(k, key):
                return kept
        kept = kept_basis_blocks(sites, self.shape, self.origin, basis, self.keep_bytes / 4)
        self._gaussians.append((key, basis, kept))
        return kept

    def hamiltonian(self, rho: np.ndarray) -> BlockSparse:
        """H[ρ] (eV) for the density ``rho`` (e/Å³) on this grid, on H(0)'s blocks and S's (H(0) reaches
        further than S through the non-local projectors; ΔV's matrix lives where orbitals overlap)."""
        dvr = hxc_change(rho, self.rho_atoms, self.rho_core, self.lattice, self.functional)
        x = np.zeros(len(self.h0.data))
        dest, src = self._s_in_h0
        x[dest] = self.matrix_of(dvr)[src]
        data = self.h0.data + (x[:, None, None] * np.eye(2) if self.h0.spin == "spinor" else x)
        return self.h0.with_data(data, self.h0.spin)

    def matrix_of(self, potential: np.ndarray) -> np.ndarray:
        """(nnz of S,) ⟨φ_i|v|φ_j⟩ (eV) of a local potential given on this grid (eV)."""
        def field(shape, origin):
            return potential[..., None]
        return _grid_integrals(self.system, self.s, self.spacing, field, grid_origin=self.origin,
                               orbitals=self.orbitals)[:, 0]

    def density(self, h: BlockSparse) -> tuple[np.ndarray, float]:
        """(ρ_out (e/Å³) on this grid, E_F (eV)) of the occupied states of ``h`` on the full k-mesh."""
        dm, ef = density_matrix(h, self.s, self.kfrac, self.kweights, self.nelec, self.system.smearing,
                                charge_only=True, overlap=self.overlap)
        return density_on_grid(self.system, dm, self.shape, origin=self.origin, orbitals=self.orbitals), ef

    def residual_norm(self, residual: np.ndarray) -> float:
        """∫|ρ_out − ρ_in| / N_e."""
        return float(np.abs(residual).sum() * self.dv / self.nelec)


def time_reversal_half(kfrac: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One k-point of every pair (k, −k) of a full mesh, its weight doubled (k ≡ −k kept once).

    Without a magnetisation, H(−k) is H(k)* (spin: σ_y H(k)* σ_y), so the pair's density matrices are
    complex conjugates in real space and their charge parts sum to twice the real part of one: the
    density (and the Fermi level) from half the diagonalisations. The density matrix built on the half
    mesh is right in its real charge part only, which is all the SCF uses.
    """
    kfrac = np.asarray(kfrac, dtype=float)
    key = np.round(np.mod(kfrac, 1.0) * 1e6).astype(np.int64) % 1_000_000
    mkey = np.round(np.mod(-kfrac, 1.0) * 1e6).astype(np.int64) % 1_000_000
    index = {tuple(k): i for i, k in enumerate(key)}
    keep, w = [], []
    for i in range(len(kfrac)):
        j = index.get(tuple(mkey[i]))
        if j is None:  # −k not on the mesh: keep k alone
            keep.append(i)
            w.append(weights[i])
        elif j == i:
            keep.append(i)
            w.append(weights[i])
        elif j > i:
            keep.append(i)
            w.append(weights[i] + weights[j])
    return kfrac[keep], np.asarray(w)


def _on_union(h0: BlockSparse, s: BlockSparse) -> BlockSparse:
    """H(0) on the union of its blocks and S's (zero where it had none), its own blocks when they
    already hold all of S's."""
    keys = np.concatenate([np.stack([m.edge_i, m.edge_j, *m.R.T], 1) for m in (h0, s)])
    u = np.unique(keys, axis=0)
    if len(u) == h0.n_edges:
        return h0
    return h0.aligned_to_edges(u[:, 0], u[:, 1], u[:, 2:])


def _kerker(residual: np.ndarray, lattice: np.ndarray, beta: float, q0: float) -> np.ndarray:
    """β·G²/(G² + q0²) applied to the residual in reciprocal space (β alone when q0 = 0); G = 0 kept at β."""
    if q0 <= 0:
        return beta * residual
    g2 = (reciprocal_grid(lattice, residual.shape) ** 2).sum(-1)
    w = g2 / (g2 + q0 * q0)
    w[0, 0, 0] = 1.0
    return np.fft.ifftn(beta * w * np.fft.fftn(residual)).real


def complete_scf(system, start: BlockSparse | None = None, settings: ScfSettings | None = None,
                 progress=None, start_density: np.ndarray | None = None,
                 consistency: SelfConsistency | None = None,
                 prior: list[tuple[np.ndarray, np.ndarray]] = (),
                 start_hamiltonian: BlockSparse | None = None,
                 start_output: tuple[np.ndarray, float] | None = None) -> ScfResult:
    """The self-consistent H of ``system`` (which holds H0, S, its k-mesh, electron count, smearing and
    atomic densities), starting from the atoms' density, from the density of ``start`` (a predicted H),
    or from ``start_density`` itself (e/Å³ on the grid of ``consistency``, e.g. a density model's).

    ``progress(iteration, residual)`` is called after every iteration when given. ``consistency``: the
    SelfConsistency of ``system`` at ``settings.spacing`` when one is already set up (its grid is reused).
    ``prior``: (ρ_in, ρ_out) pairs of Kohn–Sham steps already taken on that grid (a density model's), which
    start the Pulay history with ``settings.prior_history`` (they cost nothing more: their diagonalisations
    are done). ``start_hamiltonian``: H[start_density] when the caller already has it (a density model's
    prediction), which saves one H[ρ]. ``start_output``: (ρ_out, E_F) of that H's occupied states when the caller
    already has them (a prediction that measured its own residual), which saves the first diagonalisation.
    """
    cfg = settings or ScfSettings()
    t0 = time.perf_counter()
    sc = consistency if consistency is not None else SelfConsistency(system, cfg.spacing)
    if start_density is not None:
        if start_density.shape != tuple(sc.shape):
            raise ValueError(f"the starting density's grid {start_density.shape} is not the completion's {sc.shape}")
        rho_in = np.asarray(start_density, dtype=float)
        h = start_hamiltonian if start_hamiltonian is not None else sc.hamiltonian(rho_in)
    elif start is None:
        rho_in, h = sc.rho_atoms.copy(), sc.h0
    else:
        rho_in, _ = sc.density(start)
        h = sc.hamiltonian(rho_in)
    prior = list(prior) if cfg.prior_history else []
    if any(x.shape != tuple(sc.shape) or y.shape != tuple(sc.shape) for x, y in prior):
        raise ValueError(f"a prior step's densities are not on the completion's grid {sc.shape}")
    rhos: list[np.ndarray] = [np.asarray(x, dtype=float) for x, _ in prior][-cfg.history:]
    res: list[np.ndarray] = [np.asarray(y - x, dtype=float) for x, y in prior][-cfg.history:]
    norms: list[float] = []
    taken: list[tuple[np.ndarray, np.ndarray]] = []
    ef = float("nan")
    converged = False
    if start_output is not None and (start_density is None or start_output[0].shape != tuple(sc.shape)):
        raise ValueError("a starting output density needs its starting density, on the completion's grid")
    for it in range(cfg.max_iter):
        rho_out, ef = start_output if (it == 0 and start_output is not None) else sc.density(h)
        r = rho_out - rho_in
        taken = (taken + [(rho_in, rho_out)])[-cfg.history:]
        norms.append(sc.residual_norm(r))
        if progress is not None:
            progress(it + 1, norms[-1])
        converged = norms[-1] < cfg.tol
        if converged and not cfg.mix_last:
            break
        rhos, res = (rhos + [rho_in])[-cfg.history:], (res + [r])[-cfg.history:]
        rho_in = _pulay(rhos, res, sc.lattice, cfg)
        h = sc.hamiltonian(rho_in)
        if converged:
            break
    return ScfResult(h, converged, norms, ef, time.perf_counter() - t0, rho_in, taken)


def _pulay(rhos: list[np.ndarray], res: list[np.ndarray], lattice: np.ndarray, cfg: ScfSettings) -> np.ndarray:
    """The next input density: the combination Σ α_i (ρ_i + P r_i) with Σ α_i = 1 that minimises
    |Σ α_i r_i|² (Pulay / DIIS), P the Kerker-preconditioned mixing."""
    n = len(res)
    flat = np.stack([r.reshape(-1) for r in res])
    a = flat @ flat.T
    a += 1e-12 * np.trace(a) / n * np.eye(n)
    try:
        alpha = np.linalg.solve(a, np.ones(n))
    except np.linalg.LinAlgError:
        alpha = np.zeros(n)
        alpha[-1] = 1.0
    alpha /= alpha.sum()
    rho = sum(c * p for c, p in zip(alpha, rhos))
    r = sum(c * q for c, q in zip(alpha, res))
    return rho + _kerker(r, lattice, cfg.beta, cfg.kerker_q0)
