"""Binary ``.scfout`` files of OpenMX (``HS.fileout on``): both layouts in use.

* version 0 (OpenMX 3.7/3.8): header ints, cell copies (atv, atv_ijk), orbitals per atom,
  neighbour lists (natn, ncn), tv, rtv, Gxyz, Hks[spin], iHks[3] (non-collinear only), OLP,
  OLPpox/y/z, DM[spin], Solver, ChemP, E_Temp, dipoles, Valence_Electrons, Total_SpinS, input text.
* version 3 (OpenMX 3.9): the spin switch carries the version (SpinP_switch + 4·version), an
  ``order_max`` int follows the header, OLPpo has order_max orders, then OLPmo[3] and iDM[2]
  follow the density matrix.

Units as written: Hartree (H, ChemP), Kelvin (E_Temp), Bohr (tv, atv, Gxyz). Matrices are returned as
flat arrays over the (atom, neighbour, i, j) entries in file order, with their indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextham_dft.errors import ParseError

MAX_LINE_SIZE = 256
LATEST_VERSION = 3


@dataclass
class Scfout:
    """Contents of one .scfout file (raw OpenMX units: Hartree, Bohr).

    rows/cols: (nnz,) orbital indices (atoms in order, 0-based) of every matrix entry;
    R: (nnz, 3) cell of the column orbital; hks: (nspin_blocks, nnz) Hks; ihks: (3, nnz) or None;
    olp: (nnz,); dm: (nspin_blocks, nnz).
    """

    path: Path
    version: int
    spin_switch: int
    norb: np.ndarray
    tv_bohr: np.ndarray
    gxyz_bohr: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    R: np.ndarray
    hks: np.ndarray
    ihks: np.ndarray | None
    olp: np.ndarray
    dm: np.ndarray
    chem_p_ha: float
    e_temp_k: float
    valence_electrons: float
    total_spin: float
    solver: int
    input_text: str = field(repr=False, default="")
    #: byte range (start, end) of each section of the file, in file order
    sections: dict[str, tuple[int, int]] = field(repr=False, default_factory=dict)


class _Reader:
    def __init__(self, data: bytes, path: Path, endian: str) -> None:
        self.data, self.path, self.pos, self.e = data, path, 0, endian

    def take(self, dtype: str, n: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * n
        if self.pos + size > len(self.data):
            raise ParseError(self.path, f"truncated file (needs {self.pos + size} bytes, has {len(self.data)})")
        out = np.frombuffer(self.data, dtype=self.e + dtype, count=n, offset=self.pos)
        self.pos += size
        return out.astype(dtype[0] + str(np.dtype(dtype).itemsize))


def _endianness(data: bytes, path: Path) -> str:
    if len(data) < 28:
        raise ParseError(path, "not an OpenMX .scfout file (too short)")
    for e in ("<", ">"):
        head = np.frombuffer(data, dtype=e + "i4", count=6)
        if head[0] > 0 and 0 <= head[1] <= LATEST_VERSION * 4 + 3 and head[1] % 4 in (0, 1, 3) and head[5] >= 0:
            return e
    raise ParseError(path, "not an OpenMX .scfout file (header is not atomnum, SpinP_switch, ...)")


def read_scfout(path: str | Path) -> Scfout:
    """Read an OpenMX .scfout (version 0 or 3); a clear ParseError for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParseError(path, f"cannot read: {exc}") from None
    rd = _Reader(data, path, _endianness(data, path))
    sections: dict[str, tuple[int, int]] = {}

    def mark(name: str, start: int) -> None:
        sections[name] = (start, rd.pos)

    atomnum, spin_raw, _c, _l, _r, tcpy = (int(x) for x in rd.take("i4", 6))
    mark("header", 0)
    version, spin = spin_raw // 4, spin_raw % 4
    if version not in (0, LATEST_VERSION):
        raise ParseError(path, f"scfout layout version {version} is not supported (0: OpenMX ≤ 3.8, 3: OpenMX 3.9)")
    p = rd.pos
    order_max = int(rd.take("i4", 1)[0]) if version >= 1 else 1
    mark("order_max", p)
    p = rd.pos
    if not 1 <= order_max <= 16:
        raise ParseError(path, f"implausible order_max {order_max}")
    rd.take("f8", 4 * (tcpy + 1))  # atv (Bohr): R in Cartesian, redundant with atv_ijk
    atv_ijk = rd.take("i4", 4 * (tcpy + 1)).reshape(tcpy + 1, 4)[:, 1:]
    norb = rd.take("i4", atomnum).astype(np.int64)
    fnan = rd.take("i4", atomnum).astype(np.int64)
    if np.any(norb <= 0) or np.any(fnan < 0):
        raise ParseError(path, "negative or zero orbital/neighbour counts (corrupted file?)")
    natn = [rd.take("i4", int(f) + 1).astype(np.int64) for f in fnan]
    ncn = [rd.take("i4", int(f) + 1).astype(np.int64) for f in fnan]
    tv = rd.take("f8", 12).reshape(3, 4)[:, 1:].copy()
    rd.take("f8", 12)  # rtv
    gxyz = rd.take("f8", 4 * atomnum).reshape(atomnum, 4)[:, 1:].copy()
    mark("geometry", p)
    # entry indices, identical for every matrix
    aoff = np.concatenate([[0], np.cumsum(norb)])
    rows, cols, Rs = [], [], []
    for a in range(atomnum):
        for h in range(int(fnan[a]) + 1):
            b = int(natn[a][h]) - 1
            rn = int(ncn[a][h])
            if not (0 <= b < atomnum and 0 <= rn <= tcpy):
                raise ParseError(path, f"neighbour list of atom {a + 1} points outside the cell list (corrupted file?)")
            n1, n2 = norb[a], norb[b]
            rows.append(np.repeat(aoff[a] + np.arange(n1), n2))
            cols.append(np.tile(aoff[b] + np.arange(n2), n1))
            Rs.append(np.broadcast_to(atv_ijk[rn], (n1 * n2, 3)))
    rows_a, cols_a, R_a = np.concatenate(rows), np.concatenate(cols), np.concatenate(Rs)
    nnz = len(rows_a)
    nblk = spin + 1
    p = rd.pos
    hks = rd.take("f8", nblk * nnz).reshape(nblk, nnz)
    mark("Hks", p)
    p = rd.pos
    ihks = rd.take("f8", 3 * nnz).reshape(3, nnz) if spin == 3 else None
    mark("iHks", p)
    p = rd.pos
    olp = rd.take("f8", nnz)
    mark("OLP", p)
    p = rd.pos
    rd.take("f8", 3 * order_max * nnz)  # position operator
    mark("OLPpo", p)
    p = rd.pos
    if version >= 1:
        rd.take("f8", 3 * nnz)  # momentum operator
    mark("OLPmo", p)
    p = rd.pos
    dm = rd.take("f8", nblk * nnz).reshape(nblk, nnz)
    mark("DM", p)
    p = rd.pos
    if version >= 1:
        rd.take("f8", 2 * nnz)  # iDM
    mark("iDM", p)
    p = rd.pos
    solver = int(rd.take("i4", 1)[0])
    d = rd.take("f8", 10)
    nlines = int(rd.take("i4", 1)[0])
    sections["tail"] = (p, len(data))
    text = ""
    if 0 < nlines and rd.pos + nlines * MAX_LINE_SIZE <= len(data):
        raw = data[rd.pos : rd.pos + nlines * MAX_LINE_SIZE]
        text = "".join(raw[i * MAX_LINE_SIZE : (i + 1) * MAX_LINE_SIZE].split(b"\0", 1)[0].decode("latin-1")
                       for i in range(nlines))
    return Scfout(path, version, spin, norb, tv, gxyz, rows_a, cols_a, R_a.astype(np.int64), hks, ihks, olp, dm,
                  float(d[0]), float(d[1]), float(d[8]), float(d[9]), solver, text, sections)
