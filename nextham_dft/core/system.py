"""The canonical description of one calculation: what every adapter returns.

Everything here is code-independent: Å, eV, lattice vectors as rows, Cartesian
positions, orbitals in the canonical order and e3nn's real-harmonic convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingDataError
from .atomic import AtomicDensity
from .basis import SpeciesBasis
from .blocks import BlockSparse
from .density import density_matrix
from .kspace import Smearing, band_energies, fermi_level

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

SPIN_MODES = ("none", "collinear", "noncollinear")


@dataclass
class KPoints:
    """k-points in fractional coordinates (nk, 3) with weights (nk,) summing to 1.

    mesh: the Monkhorst–Pack/Γ mesh they come from, when known.
    """

    frac: np.ndarray
    weights: np.ndarray
    mesh: tuple[int, int, int] | None = None

    @classmethod
    def from_mesh(cls, mesh: tuple[int, int, int], shift: tuple[float, float, float] = (0, 0, 0)) -> KPoints:
        """Full Γ-centred (or shifted) mesh, uniform weights."""
        g = [(np.arange(n) + s) / n for n, s in zip(mesh, shift)]
        k = np.stack(np.meshgrid(*g, indexing="ij"), -1).reshape(-1, 3)
        k = k - np.round(k)
        return cls(k, np.full(len(k), 1.0 / len(k)), tuple(mesh))


    def full_mesh(self) -> KPoints:
        """The whole mesh these k-points come from (no symmetry reduction), uniform weights.

        The shift is the one (Γ-centred, half a step on even axes, or half a step on all) whose
        points contain these k-points up to time reversal; codes list reduced sets of either.
        """
        if self.mesh is None:
            raise MissingDataError("the run's k-mesh is unknown (no mesh in its input): a density matrix needs it")
        shifts = [(0.0, 0.0, 0.0), tuple(0.5 if n % 2 == 0 else 0.0 for n in self.mesh), (0.5, 0.5, 0.5)]
        for shift in shifts:
            cand = KPoints.from_mesh(self.mesh, shift)
            d = self.frac[:, None, :] - cand.frac[None]
            p = self.frac[:, None, :] + cand.frac[None]
            hit = np.all(np.abs(d - np.round(d)) < 1e-4, -1) | np.all(np.abs(p - np.round(p)) < 1e-4, -1)
            if np.all(hit.any(axis=1)):
                return cand
        return KPoints.from_mesh(self.mesh)


@dataclass
class System:
    """One calculation in canonical form.

    lattice: (3, 3) Å rows; positions: (n_atoms, 3) Cartesian Å; kinds: (n_atoms,)
    index into ``bases``; spin_mode: 'none' | 'collinear' | 'noncollinear'; soc:
    spin–orbit coupling on; matrices: 'H0' (zeroth step), 'H' (converged), 'S',
    in eV (H) and dimensionless (S); nelec: valence electrons; kpoints: the run's
    k-points; reference_eigenvalues: {'H0'|'H': (kfrac (nk,3), eV (nk, nb))} as
    the DFT code printed them; fermi_ev: the code's own Fermi level per step;
    atomic_densities: the pseudopotentials' atomic and core densities, one per
    species as ``bases`` (empty when the adapter did not read them).
    """

    lattice: np.ndarray
    positions: np.ndarray
    kinds: np.ndarray
    bases: list[SpeciesBasis]
    spin_mode: str = "none"
    soc: bool = False
    matrices: dict[str, BlockSparse] = field(default_factory=dict)
    nelec: float | None = None
    smearing: Smearing = field(default_factory=Smearing)
    kpoints: KPoints | None = None
    reference_eigenvalues: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    fermi_ev: dict[str, float] = field(default_factory=dict)
    magmom: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    atomic_densities: list[AtomicDensity] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.spin_mode not in SPIN_MODES:
            raise ValueError(f"unknown spin mode {self.spin_mode!r}")
        self.lattice = np.asarray(self.lattice, dtype=float).reshape(3, 3)
        self.positions = np.asarray(self.positions, dtype=float).reshape(-1, 3)
        self.kinds = np.asarray(self.kinds, dtype=np.int64)

    # ------------------------------------------------------------------ facts
    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @property
    def elements(self) -> list[str]:
        return [self.bases[k].element for k in self.kinds]

    @property
    def norb(self) -> np.ndarray:
        """(n_atoms,) orbitals per atom (without spin)."""
        return np.array([self.bases[k].norb for k in self.kinds], dtype=np.int64)

    @property
    def dim(self) -> int:
        """Matrix dimension including spin (2× for non-collinear)."""
        n = int(self.norb.sum())
        return 2 * n if self.spin_mode == "noncollinear" else n

    @property
    def formula(self) -> str:
        from collections import Counter

        c = Counter(self.elements)
        return "".join(f"{el}{n if n > 1 else ''}" for el, n in sorted(c.items()))

    @property
    def frac_positions(self) -> np.ndarray:
        return self.positions @ np.linalg.inv(self.lattice)

    def bond_vectors(self, ei: np.ndarray, ej: np.ndarray, R: np.ndarray) -> np.ndarray:
        """Å (E, 3): τ_j + R·A − τ_i of the blocks (i, j, R) (R integer lattice vectors, (E, 3))."""
        return self.positions[ej] + np.asarray(R) @ self.lattice - self.positions[ei]

    @property
    def spin_degeneracy(self) -> float:
        return 2.0 if self.spin_mode == "none" else 1.0

    def to_pymatgen(self) -> Structure:
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.elements, self.positions, coords_are_cartesian=True)

    def to_ase(self):
        from ase import Atoms

        return Atoms(symbols=self.elements, positions=self.positions, cell=self.lattice, pbc=True)

    # ------------------------------------------------------------------ bands
    def hamiltonian(self, source: str) -> BlockSparse:
        try:
            return self.matrices[source]
        except KeyError:
            have = ", ".join(sorted(self.matrices)) or "none"
            raise MissingDataError(f"no {source} matrix in this run (have: {have})") from None

    def bands(self, source: str, kfrac: np.ndarray) -> np.ndarray:
        """Eigenvalues (eV) of matrix ``source`` at fractional k-points."""
        return band_energies(self.hamiltonian(source), self.matrices["S"], kfrac)

    def full_kmesh(self) -> KPoints:
        """The run's whole k-mesh (see :meth:`KPoints.full_mesh`); MissingDataError when it is unknown."""
        if self.kpoints is None:
            raise MissingDataError("the run's k-points are unknown: a density matrix needs its k-mesh")
        return self.kpoints.full_mesh()

    def require_nelec(self, why: str = "no pseudopotential, nelec or log found") -> float:
        """The valence electron count; MissingDataError (saying ``why`` it is missing) when unknown."""
        if self.nelec is None:
            raise MissingDataError(f"the electron count is unknown ({why})")
        return self.nelec

    def fermi_from_bands(self, eigs: np.ndarray, weights: np.ndarray) -> float:
        """Fermi level (eV) from eigenvalues on a k-mesh and the electron count."""
        return fermi_level(eigs, weights, self.require_nelec(), self.smearing, self.spin_degeneracy)

    def density_matrix(self, source: str, pattern: BlockSparse | None = None) -> tuple[BlockSparse, float]:
        """(DM(R), E_F in eV) of Hamiltonian ``source`` on the run's full k-mesh with its smearing and
        electron count (:func:`.density.density_matrix`; DM on ``pattern``'s blocks, default S's)."""
        mesh = self.full_kmesh()
        return density_matrix(self.hamiltonian(source), self.matrices["S"], mesh.frac, mesh.weights,
                              self.require_nelec(), self.smearing, pattern=pattern)
