"""High-symmetry k-paths (seekpath), expressed in the fractional coordinates of *our* cell."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KPath:
    """Points along a path: frac (nk, 3) in our cell's reciprocal basis, distance (nk,) 1/Å,
    and labelled ticks [(index, label)]."""

    frac: np.ndarray
    distance: np.ndarray
    ticks: list[tuple[int, str]]


def _pretty(label: str) -> str:
    return "Γ" if label.upper() in ("GAMMA", "G") else label.replace("_", "")


def high_symmetry_path(lattice: np.ndarray, frac_positions: np.ndarray, numbers: list[int], density: float = 40.0,
                       symprec: float = 1e-3) -> KPath:
    """seekpath's path for the structure; k mapped back to the input cell (rotation handled).

    density: points per 1/Å (2π included) along the path.
    """
    import seekpath

    cell = (np.asarray(lattice, float), np.asarray(frac_positions, float), list(numbers))
    res = seekpath.get_explicit_k_path(cell, reference_distance=1.0 / density, symprec=symprec)
    k_std = np.asarray(res["explicit_kpoints_abs"])  # Cartesian, 2π included, standardized frame
    rot = np.asarray(res["rotation_matrix"])
    prim = np.asarray(res["primitive_lattice"])
    a = np.asarray(lattice, float)
    best = None
    for r in (rot, rot.T):
        m = np.linalg.solve((r @ a.T), prim.T)  # prim^T = r a^T m
        err = np.abs(m - np.round(m)).max()
        if best is None or err < best[0]:
            best = (err, r)
    r = best[1]
    k_orig = k_std @ r  # k_orig = r^T k_std (row vectors)
    frac = k_orig @ a.T / (2 * np.pi)
    labels = res["explicit_kpoints_labels"]
    ticks = [(i, _pretty(l)) for i, l in enumerate(labels) if l]
    dist = np.asarray(res["explicit_kpoints_linearcoord"])
    return KPath(frac, dist, ticks)
