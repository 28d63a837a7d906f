"""ABACUS density cube files (``SPIN1_CHG.cube`` …): Gaussian cube layout, Bohr and e/Bohr³.

Header as ABACUS writes it: a comment line (``STEP: …``), a line with nspin and the Fermi energy
(Ry), ``natoms ox oy oz``, three lines ``n_i  v_i`` (voxel vectors, Bohr), one line per atom
``Z  zval  x y z`` (Bohr), then the values with z fastest, 6 per line.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextham_dft.core.units import BOHR_TO_ANG
from nextham_dft.errors import ParseError

from .textio import read_text


@dataclass
class Cube:
    """A density on a periodic grid: values (nx, ny, nz) in e/Å³, voxel vectors (3, 3) Å, atoms."""

    values: np.ndarray
    voxel: np.ndarray
    origin: np.ndarray
    numbers: np.ndarray
    zval: np.ndarray
    positions: np.ndarray
    comment: tuple[str, str] = ("", "")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    @property
    def lattice(self) -> np.ndarray:
        return self.voxel * np.array(self.shape)[:, None]


def read_cube(path: str | Path) -> Cube:
    path = Path(path)
    lines = read_text(path).splitlines()
    try:
        nat, *org = lines[2].split()[:4]
        nat = abs(int(nat))
        n, vox = [], []
        for k in range(3):
            t = lines[3 + k].split()
            n.append(int(t[0]))
            vox.append([float(x) for x in t[1:4]])
        atoms = np.array([[float(x) for x in lines[6 + a].split()[:5]] for a in range(nat)]).reshape(nat, 5)
        vals = np.array(" ".join(lines[6 + nat :]).split(), dtype=float)
    except (IndexError, ValueError) as exc:
        raise ParseError(path, f"not a cube file ({exc})") from None
    if vals.size != n[0] * n[1] * n[2]:
        raise ParseError(path, f"{vals.size} values for a {n[0]}×{n[1]}×{n[2]} grid (truncated?)")
    return Cube(vals.reshape(n) / BOHR_TO_ANG**3, np.array(vox) * BOHR_TO_ANG, np.array(org, float) * BOHR_TO_ANG,
                atoms[:, 0].astype(int), atoms[:, 1], atoms[:, 2:5] * BOHR_TO_ANG, (lines[0], lines[1]))


def write_cube(path: str | Path, values: np.ndarray, lattice: np.ndarray, numbers, zval, positions,
               comment: tuple[str, str]) -> None:
    """Write a density (e/Å³) on the cell's grid in ABACUS's cube layout, atomically."""
    path = Path(path)
    n = values.shape
    vox = np.asarray(lattice) / np.array(n)[:, None] / BOHR_TO_ANG
    out = [comment[0], comment[1], f"{len(numbers)} 0.0 0.0 0.0 "]
    out += [f"{n[k]} {vox[k, 0]:.6f} {vox[k, 1]:.6f} {vox[k, 2]:.6f}" for k in range(3)]
    pos = np.asarray(positions) / BOHR_TO_ANG
    out += [f" {int(z)} {float(q):.6f} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for z, q, p in zip(numbers, zval, pos)]
    flat = (np.asarray(values) * BOHR_TO_ANG**3).reshape(n[0] * n[1], n[2])
    body = []
    for row in flat:  # ABACUS breaks lines every 6 values within each (x, y) column
        for a in range(0, len(row), 6):
            body.append(" " + " ".join(f"{v:.6e}" for v in row[a : a + 6]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(out + body) + "\n")
    os.replace(tmp, path)
