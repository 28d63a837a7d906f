"""Spherical atomic densities of the pseudopotentials: the valence density that H(0) is built from and
the partial core density of the non-linear core correction.

An adapter reads them from the code's pseudopotential files (UPF for ABACUS) into :class:`AtomicDensity`
(Å, e/Å³); the SCF completion (:mod:`nextham_dft.core.scf`) superposes them on its grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MissingDataError
from .density import grid_points, periodic_images


@dataclass(frozen=True)
class AtomicDensity:
    """One species' pseudopotential densities.

    r: (n,) radial grid, Å; valence: (n,) spherical valence density ρ_v(r), e/Å³ (its integral is the
    valence charge, up to the file's rounding); core: (n,) partial core density, e/Å³ (zeros without a
    core correction); functional: the exchange–correlation functional the pseudopotential was made
    with, upper case ('PBE'); z_valence: valence charge (e); source, sha256: the file it came from.
    """

    element: str
    r: np.ndarray = field(repr=False)
    valence: np.ndarray = field(repr=False)
    core: np.ndarray = field(repr=False)
    functional: str = ""
    z_valence: float = 0.0
    source: str = ""
    sha256: str = ""

    @property
    def reach(self) -> float:
        """Å: the radius beyond which both densities are below 1e-10 e/Å³ (or the table's end)."""
        big = np.nonzero((np.abs(self.valence) > 1e-10) | (np.abs(self.core) > 1e-10))[0]
        return float(self.r[min(big[-1] + 1, len(self.r) - 1)]) if len(big) else 0.0

    def charge(self) -> float:
        """∫ ρ_v d³r (e), by the trapezoidal rule on the table."""
        y = 4.0 * np.pi * self.r**2 * self.valence
        return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(self.r)))


def superposition_on_grid(system, shape: tuple[int, int, int], origin: np.ndarray,
                          part: str | tuple[str, ...] = "valence", chunk: int = 8192) -> np.ndarray:
    """Σ_atoms Σ_T ρ_a(|r − τ_a − T|) (e/Å³) at the grid points origin + (n/N)·A of the cell, for
    ``part`` 'valence' or 'core' of ``system.atomic_densities`` (one per species, as ``system.bases``);
    for a tuple of parts, (len(parts), *shape), their point–atom distances found once."""
    from scipy.spatial import cKDTree

    parts = (part,) if isinstance(part, str) else tuple(part)
    if not set(parts) <= {"valence", "core"}:
        raise ValueError(f"unknown density part(s) {parts}: 'valence' or 'core'")
    dens = require_atomic_densities(system)
    lat = np.asarray(system.lattice, dtype=float)
    pts = (np.asarray(origin, dtype=float) + grid_points(lat, shape)).reshape(-1, 3)
    reach = max(d.reach for d in dens)
    owner, _T, pos = periodic_images(lat, system.positions, reach, margin=2)
    kinds = np.asarray(system.kinds)[owner]
    tables = []
    for k, d in enumerate(dens):
        fs = [d.valence if p == "valence" else d.core for p in parts]
        if any(np.any(f) for f in fs) and np.any(kinds == k):
            tables.append((cKDTree(pos[kinds == k]), d.reach, d.r, fs))
    out = np.zeros((len(parts), len(pts)))
    for a in range(0, len(pts), chunk):  # every (point, image) pair within reach, a chunk of points at a time
        points = cKDTree(pts[a : a + chunk])
        for images, reach_k, r, fs in tables:
            pairs = points.sparse_distance_matrix(images, reach_k, output_type="ndarray")
            for n, f in enumerate(fs):
                if np.any(f):
                    out[n, a : a + chunk] += np.bincount(pairs["i"], radial_interp(pairs["v"], r, f), minlength=points.n)
    out = out.reshape((len(parts),) + tuple(shape))
    return out[0] if isinstance(part, str) else out


def radial_interp(x: np.ndarray, r: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Linear interpolation of the table f(r) at x (0 beyond its end), as ``np.interp``; on a uniform
    mesh starting at 0 (ONCVPSP's UPF files) by index arithmetic instead of a search."""
    dr = r[1] - r[0] if len(r) > 1 else 0.0
    if len(r) < 2 or r[0] != 0.0 or not np.allclose(np.diff(r), dr, rtol=1e-9, atol=0.0):
        return np.interp(x, r, f, right=0.0)
    t = x / dr
    i = np.minimum(t.astype(np.int64), len(r) - 2)
    w = t - i
    out = f[i] * (1.0 - w) + f[i + 1] * w
    out[x > r[-1]] = 0.0
    return out


def require_atomic_densities(system) -> list[AtomicDensity]:
    """The system's atomic densities, one per species, or a one-line error naming what is missing."""
    dens = getattr(system, "atomic_densities", None) or []
    if len(dens) != len(system.bases):
        why = (getattr(system, "meta", None) or {}).get("atomic_densities_missing")
        raise MissingDataError("the self-consistent completion needs the pseudopotentials' atomic and core densities"
                               + (f": {why}" if why else ", which were not read for this run"))
    return list(dens)
