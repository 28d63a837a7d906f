"""SIESTA text outputs: ``.EIG`` (eV), ``.KP`` (k in Bohr⁻¹, Cartesian, with weights) and the run log."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nextham_dft.errors import ParseError


def read_eig(path: str | Path) -> tuple[float, np.ndarray]:
    """A .EIG file: (Fermi level eV, eigenvalues eV (nk, nb) or (2, nk, nb) for collinear spin).

    Layout: E_F; ``nbands nspin nk``; per k-point its index and nbands·nspin values (up then
    down for nspin 2; for non-collinear and spin–orbit runs, nbands already counts spinors).
    """
    path = Path(path)
    try:
        tok = path.read_text().split()
        ef = float(tok[0])
        nb, nspin, nk = int(tok[1]), int(tok[2]), int(tok[3])
        per = nb * (2 if nspin == 2 else 1)
        vals = tok[4:]
        if len(vals) != nk * (per + 1):
            raise ValueError(f"{len(vals)} numbers after the header, expected {nk * (per + 1)} (truncated?)")
        arr = np.array(vals, dtype=float).reshape(nk, per + 1)
    except (IndexError, ValueError) as exc:
        raise ParseError(path, f"not a SIESTA .EIG file ({exc})") from None
    e = arr[:, 1:]
    if nspin == 2:
        e = e.reshape(nk, 2, nb).transpose(1, 0, 2)
    return ef, e


def read_kp(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A .KP file: (k Cartesian in Bohr⁻¹ (nk, 3), weights (nk,) summing to 1)."""
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        nk = int(lines[0][0])
        arr = np.array([[float(x) for x in ln[1:5]] for ln in lines[1 : nk + 1]])
        if arr.shape != (nk, 4):
            raise ValueError("fewer k-points than announced")
    except (IndexError, ValueError) as exc:
        raise ParseError(path, f"not a SIESTA .KP file ({exc})") from None
    w = arr[:, 3]
    return arr[:, :3], w / w.sum()


def read_log_facts(path: str | Path) -> dict[str, object]:
    """Electron count and version from a SIESTA standard output, when present."""
    text = Path(path).read_text(errors="replace")
    out: dict[str, object] = {}
    m = re.search(r"Total number of electrons:\s*([-+0-9.Ee]+)", text)
    if m:
        out["nelec"] = float(m.group(1))
    m = re.search(r"^Version\s*:\s*(\S+)", text, re.M)
    if m:
        out["version"] = m.group(1)
    return out


def read_bands(path: str | Path) -> tuple[float, np.ndarray, np.ndarray]:
    """A .bands file: (E_F eV, path coordinate (nk,) Bohr⁻¹, eigenvalues eV (nk, nb) or (2, nk, nb))."""
    path = Path(path)
    try:
        tok = path.read_text().split()
        ef = float(tok[0])
        nb, nspin, nk = int(tok[5]), int(tok[6]), int(tok[7])
        per = nb * (2 if nspin == 2 else 1)
        vals = np.array(tok[8 : 8 + nk * (per + 1)], dtype=float)
        if vals.size != nk * (per + 1):
            raise ValueError("fewer values than announced (truncated?)")
    except (IndexError, ValueError) as exc:
        raise ParseError(path, f"not a SIESTA .bands file ({exc})") from None
    arr = vals.reshape(nk, per + 1)
    e = arr[:, 1:]
    if nspin == 2:
        e = e.reshape(nk, 2, nb).transpose(1, 0, 2)
    return ef, arr[:, 0], e


def band_lines_kpoints(rows: list[str], scale: str, lattice_ang: np.ndarray, alat_ang: float) -> np.ndarray:
    """Fractional k-points of a ``%block BandLines`` (n k1 k2 k3 [label] per line).

    The first line is one point; each next line adds n points up to and including its k.
    ``scale`` is BandLinesScale: ``pi/a`` (Cartesian, units of π/a; SIESTA's default) or
    ``ReciprocalLatticeVectors`` (fractional).
    """
    pts: list[np.ndarray] = []
    prev = None
    for ln in rows:
        t = ln.split()
        n, k = int(t[0]), np.array([float(x) for x in t[1:4]])
        if prev is None:
            pts.append(k)
        else:
            for j in range(1, n + 1):
                pts.append(prev + (k - prev) * j / n)
        prev = k
    kk = np.array(pts)
    if scale.lower().startswith("reciprocal"):
        return kk
    return kk @ np.asarray(lattice_ang).T / (2.0 * alat_ang)
