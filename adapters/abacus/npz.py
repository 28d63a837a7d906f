"""ABACUS's NPZ real-space matrices (H(R), S(R)): ``out_hr_npz``/``out_hsr_npz``, and ``out_hsr 3``.

File names: ``output_HR0.npz`` (``output_HR1.npz`` for spin down) and ``output_SR.npz`` (ABACUS 3.6
to develop 2026-06), ``hrs1_nao.npz``, ``hrs2_nao.npz`` and ``sr_nao.npz`` (develop from 2026-07,
abacus-develop#7707). One zip archive of ``.npy`` arrays, as ABACUS's ``ModuleIO::output_mat_npz``
writes it:

* ``lattice_vectors`` (9,): the cell vectors in Bohr, row by row;
* ``atom_info`` (nat, 5): species index, atomic number, fractional position, per atom in STRU order;
* ``orbital_info_<it>`` (nw, 3): (zeta, l, m) of each orbital of species ``it``, in ABACUS's order;
* ``mat_<i>_<j>_<Rx>_<Ry>_<Rz>`` (rows, cols): the block of atoms i, j at cell R, in ABACUS's orbital
  order and units (Ry for H). Real for nspin 1 and 2; complex and spinor-interleaved (rows 2μ + s)
  for nspin 4. Parallel runs store the pairs with i ≤ j only, serial runs all of them; the missing
  half is M(j, i, −R) = M(i, j, R)^†.

``read_npz`` returns the same ``CsrFile`` as the text reader (generation ``"npz"``), so everything
after it is shared. The archive holds one member per atom pair and cell, so it is read member by
member; the entries are then gathered into flat arrays once.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from nextham_dft.errors import ParseError

from .csr import CsrFile

_BLOCK = re.compile(r"^mat_(\d+)_(\d+)_(-?\d+)_(-?\d+)_(-?\d+)$")


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ParseError(path, f"not a readable NPZ archive ({exc})") from None


def _orbital_counts(arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """(nat,) number of orbitals of each atom, from ``atom_info`` and ``orbital_info_<it>``."""
    if "atom_info" not in arrays:
        raise ParseError(path, "no 'atom_info' array (not an ABACUS matrix archive)")
    info = np.asarray(arrays["atom_info"], dtype=float).reshape(-1, 5)
    species = info[:, 0].astype(int)
    counts = {}
    for it in np.unique(species):
        key = f"orbital_info_{it}"
        if key not in arrays:
            raise ParseError(path, f"no '{key}' array for species {it}")
        counts[it] = int(np.asarray(arrays[key]).reshape(-1, 3).shape[0])
    return np.array([counts[it] for it in species], dtype=np.int64)


def read_npz(path: str | Path) -> CsrFile:
    """One ABACUS NPZ matrix archive as a ``CsrFile`` (every entry of both halves, file units)."""
    path = Path(path)
    arrays = _load(path)
    nw = _orbital_counts(arrays, path)
    blocks = []
    for key, block in arrays.items():
        m = _BLOCK.match(key)
        if m is None:
            continue
        i, j, rx, ry, rz = (int(g) for g in m.groups())
        if not (i < len(nw) and j < len(nw)):
            raise ParseError(path, f"{key}: atom index beyond the {len(nw)} atoms of 'atom_info'")
        blocks.append((i, j, (rx, ry, rz), np.asarray(block)))
    if not blocks:
        raise ParseError(path, "no 'mat_<i>_<j>_<Rx>_<Ry>_<Rz>' blocks")
    i0, j0, _r, b0 = blocks[0]
    spin = b0.shape[0] // int(nw[i0]) if nw[i0] else 0
    if spin not in (1, 2) or b0.shape != (spin * nw[i0], spin * nw[j0]):
        raise ParseError(path, f"block of atoms {i0}, {j0} has shape {b0.shape}, not a multiple of "
                               f"({nw[i0]}, {nw[j0]}) orbitals")
    offset = np.concatenate([[0], np.cumsum(spin * nw)])
    stored = {(i, j, r) for i, j, r, _b in blocks}
    rows, cols, rvec, vals = [], [], [], []

    def add(i: int, j: int, r: tuple[int, int, int], b: np.ndarray) -> None:
        if b.shape != (spin * nw[i], spin * nw[j]):
            raise ParseError(path, f"block of atoms {i}, {j} at R = {r} has shape {b.shape}, "
                                   f"not ({spin * nw[i]}, {spin * nw[j]})")
        a, c = np.nonzero(b)
        rows.append(offset[i] + a)
        cols.append(offset[j] + c)
        rvec.append(np.broadcast_to(np.array(r, dtype=np.int64), (len(a), 3)))
        vals.append(b[a, c])

    for i, j, r, b in blocks:
        add(i, j, r, b)
        mirror = (j, i, (-r[0], -r[1], -r[2]))
        if mirror not in stored:  # the half that parallel runs leave out
            add(*mirror, b.conj().T)
    R, ridx = np.unique(np.concatenate(rvec), axis=0, return_inverse=True)
    values = np.concatenate(vals)
    return CsrFile(path=str(path), generation="npz", dim=int(offset[-1]), R=R, rows=np.concatenate(rows),
                   cols=np.concatenate(cols), Ridx=ridx.reshape(-1), values=values,
                   header={"format": "npz"})

