"""Numerical-atomic-orbital basis: radial shells per species and the canonical orbital order.

Canonical order of the orbitals of one atom: shells sorted by (l, zeta), and
inside a shell the 2l+1 functions in e3nn's real-harmonic order (see
:mod:`nextham_dft.core.sph`). Codes that order shells differently reorder in
their adapter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RadialFunction:
    """One radial function (a shell) of a NAO basis.

    l: angular momentum; zeta: index among the shells of the same l (0-based);
    rcut: cutoff radius in Å; r: (n,) radial grid in Å and f: (n,) values of the
    radial function R(r) in Å^-3/2 (empty when the file had no table).
    """

    l: int
    zeta: int
    rcut: float
    r: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    f: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)


@dataclass(frozen=True)
class SpeciesBasis:
    """The NAO basis of one species.

    element: chemical symbol; shells: radial functions in canonical order
    (l ascending, then zeta); source: file name it was read from; sha256 of that
    file (empty when unknown); family: a short code-specific tag of the basis
    family (e.g. 'abacus-nao').
    """

    element: str
    shells: tuple[RadialFunction, ...]
    source: str = ""
    sha256: str = ""
    family: str = ""

    def __post_init__(self) -> None:
        keys = [(s.l, s.zeta) for s in self.shells]
        if keys != sorted(keys):
            raise ValueError(f"{self.element}: shells must be sorted by (l, zeta), got {keys}")

    @property
    def norb(self) -> int:
        """Number of orbitals (without spin)."""
        return sum(2 * s.l + 1 for s in self.shells)

    @property
    def lmax(self) -> int:
        return max((s.l for s in self.shells), default=0)

    @property
    def rcut(self) -> float:
        """Largest cutoff radius of the species, Å."""
        return max((s.rcut for s in self.shells), default=0.0)

    def zetas(self) -> dict[int, int]:
        """Number of shells per l, e.g. {0: 2, 1: 2, 2: 1} for 2s2p1d."""
        out: dict[int, int] = {}
        for s in self.shells:
            out[s.l] = out.get(s.l, 0) + 1
        return out

    def label(self) -> str:
        """Shell label such as '2s2p1d'."""
        letters = "spdfghi"
        return "".join(f"{n}{letters[l]}" for l, n in sorted(self.zetas().items()))

    def orbital_l(self) -> np.ndarray:
        """(norb,) angular momentum of each orbital, canonical order."""
        return np.concatenate([np.full(2 * s.l + 1, s.l) for s in self.shells]).astype(int)

    def shell_slices(self) -> list[slice]:
        """Slices of each shell's orbitals inside the atom's orbital list."""
        out, start = [], 0
        for s in self.shells:
            out.append(slice(start, start + 2 * s.l + 1))
            start += 2 * s.l + 1
        return out


def shells_from_zetas(zetas: dict[int, int], rcut: float) -> tuple[RadialFunction, ...]:
    """Shells of a basis given as {l: number of zetas}, all with cutoff rcut (Å)."""
    return tuple(RadialFunction(l, z, rcut) for l in sorted(zetas) for z in range(zetas[l]))


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def orbital_transform(basis: SpeciesBasis, per_l: dict[int, np.ndarray]) -> np.ndarray:
    """Block-diagonal (norb, norb) matrix applying per_l[l] to every shell of angular momentum l."""
    n = basis.norb
    m = np.zeros((n, n))
    for s, sl in zip(basis.shells, basis.shell_slices()):
        m[sl, sl] = per_l[s.l]
    return m
