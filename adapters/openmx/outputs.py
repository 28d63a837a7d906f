"""OpenMX band outputs: ``.Band`` (Hartree, k fractional) and ``.BANDDAT*`` (eV, path coordinate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nextham_dft.errors import ParseError


def read_band(path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """A .Band file: (k fractional (nk, 3), eigenvalues Hartree (nspin, nk, nb), chemical potential Hartree).

    Layout: ``nbands spin ChemP``; the reciprocal lattice; the number of path segments and one
    line per segment; then per k-point and spin channel a ``nbands k1 k2 k3`` line and the
    eigenvalue line. Spin-polarised runs list up then down for every k-point.
    """
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        nb, spin = int(lines[0][0]), int(lines[0][1])
        chem = float(lines[0][2])
        nseg = int(lines[2][0])
        body = lines[3 + nseg :]
        nch = 2 if spin == 1 else 1
        ks, es = [], []
        for a in range(0, len(body) - 1, 2):
            head, vals = body[a], body[a + 1]
            if int(head[0]) != len(vals) or len(head) != 4:
                raise ValueError(f"k-point record {a // 2 + 1} is malformed")
            ks.append([float(x) for x in head[1:4]])
            es.append([float(x) for x in vals])
        if len(body) % 2 or len(ks) % nch:
            raise ValueError("odd number of k-point lines (truncated?)")
    except (IndexError, ValueError) as exc:
        raise ParseError(path, f"not an OpenMX .Band file ({exc})") from None
    k = np.array(ks).reshape(-1, nch, 3)[:, 0]
    e = np.array(es).reshape(len(k), nch, -1).transpose(1, 0, 2)
    if e.shape[-1] != nb:
        raise ParseError(path, f"{e.shape[-1]} eigenvalues per k-point, header says {nb}")
    return k, e, chem
