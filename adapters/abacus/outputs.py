"""ABACUS outputs besides the matrices: k-points, eigenvalues, the running log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextham_dft.errors import ParseError

from .textio import read_text


def read_kpoints(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """OUT.<suffix>/kpoints: (direct k (nk, 3), weights (nk,) summing to 1).

    ABACUS prints weights with 4 decimals; ratios close to small integers are
    snapped so that symmetry-reduced meshes keep exact multiplicities.
    """
    lines = read_text(path).splitlines()
    start = None
    for k, ln in enumerate(lines):
        if "DIRECT COORDINATES" in ln.upper():
            start = k + 2
    if start is None:
        raise ParseError(path, "no 'K-POINTS DIRECT COORDINATES' table")
    rows = []
    for ln in lines[start:]:
        t = ln.split()
        if len(t) < 5:
            break
        try:
            rows.append([float(x) for x in t[1:5]])
        except ValueError:
            break
    if not rows:
        raise ParseError(path, "empty k-point table")
    a = np.array(rows)
    w = a[:, 3]
    ratio = w / w.min()
    if np.all(np.abs(ratio - np.round(ratio)) < 0.05):
        w = np.round(ratio)
    return a[:, :3], w / w.sum()


def read_istate(path: str | Path) -> np.ndarray:
    """istate.info: eigenvalues in eV, (nk, nb), or (2, nk, nb) for nspin 2 (up, down)."""
    text = read_text(path)
    blocks = re.split(r"^\s*BAND.*$", text, flags=re.M)[1:]
    if not blocks:
        raise ParseError(path, "no 'BAND ... Kpoint' blocks (not an istate.info?)")
    ks = []
    for b in blocks:
        rows = [ln.split() for ln in b.strip().splitlines() if ln.strip()]
        try:
            arr = np.array(rows, dtype=float)
        except ValueError:
            raise ParseError(path, "non-numeric row in istate.info") from None
        ks.append(arr)
    nb = {len(a) for a in ks}
    if len(nb) != 1:
        raise ParseError(path, "k-points with different numbers of bands (truncated?)")
    arr = np.stack(ks)  # (nk, nb, ncol)
    if arr.shape[2] >= 5:
        return np.stack([arr[:, :, 1], arr[:, :, 3]])
    return arr[:, :, 1]


def read_eig_occ(path: str | Path) -> np.ndarray:
    """eig_occ.txt (ABACUS ≥ 3.10): eigenvalues in eV, (nk, nb) (spin 1 only for nspin 2: (2, nk, nb))."""
    text = read_text(path)
    parts = re.split(r"^\s*spin=(\d+)\s+k-point=\d+/\d+.*$", text, flags=re.M)
    if len(parts) < 3:
        raise ParseError(path, "no 'spin=… k-point=…' blocks")
    by_spin: dict[int, list[np.ndarray]] = {}
    for s, body in zip(parts[1::2], parts[2::2]):
        rows = []
        for ln in body.strip().splitlines():
            t = ln.split()
            if len(t) < 3:
                continue
            try:
                rows.append(float(t[1]))
            except ValueError:
                break
        by_spin.setdefault(int(s), []).append(np.array(rows))
    out = [np.stack(v) for _, v in sorted(by_spin.items())]
    return out[0] if len(out) == 1 else np.stack(out)


def read_band_txt(path: str | Path) -> np.ndarray:
    """band.txt (nscf along a path): eigenvalues in eV, (nk, nb)."""
    try:
        a = np.loadtxt(str(path)) if not str(path).endswith((".xz", ".gz")) else np.array(
            [ln.split() for ln in read_text(path).splitlines() if ln.strip()], dtype=float
        )
    except ValueError:
        raise ParseError(path, "non-numeric band.txt") from None
    return np.atleast_2d(a)[:, 2:]


@dataclass
class LogFacts:
    """What the running log tells: version, electrons, Fermi level (eV), iterations, convergence."""

    version: str = ""
    nelec: float | None = None
    efermi_ev: float | None = None
    iterations: int = 0
    converged: bool = False
    nspin: int | None = None


def read_log(path: str | Path) -> LogFacts:
    text = read_text(path)
    f = LogFacts()
    m = re.search(r"ABACUS\s+(v[\w.\-]+)", text)
    f.version = m.group(1) if m else ""
    m = re.search(r"AUTOSET number of electrons:\s*=\s*([-\d.eE+]+)", text) or re.search(
        r"^\s*nelec\s*=\s*([-\d.eE+]+)", text, re.M
    )
    f.nelec = float(m.group(1)) if m else None
    ms = re.findall(r"EFERMI\s*=\s*([-\d.eE+]+)\s*eV", text)
    f.efermi_ev = float(ms[-1]) if ms else None
    f.iterations = len(re.findall(r"ELEC\s*=\s*\d+", text))
    f.converged = "convergence is achieved" in text
    m = re.search(r"^\s*nspin\s*=\s*(\d)", text, re.M)
    f.nspin = int(m.group(1)) if m else None
    return f
