"""ABACUS sparse real-space matrices (H(R), S(R), DM(R)) in every file generation.

Generations (see docs/compatibility.md):

* ``old``: ``STEP: 0`` / ``Matrix Dimension of H(R): N`` / ``Matrix number of H(R): nR``
  header, then per R a line ``Rx Ry Rz nnz`` and, when nnz > 0, the values, the
  column indices and the N + 1 row pointers (file names ``data-HR-sparse_SPIN0.csr``
  up to 3.10, and ``hrs1_nao.csr``/``srs1_nao.csr`` in 3.10.x LTS);
* ``2025``: a commented header (``# number of localized basis``, lattice and atoms)
  and ``# CSR values`` / ``# CSR column indices`` / ``# CSR row pointers`` sections
  (3.11 and develop, ``hrs1_nao.csr``; S(R) as ``srs1_nao.csr``, and from 2026-07 ``sr_nao.csr``).

Values are real, or complex ``(re,im)`` for nspin 4 (spinor-interleaved rows
2μ+s). Units are ABACUS's (Ry for H); conversion happens in the adapter.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextham_dft.errors import ParseError

from .textfmt import write_e, write_int
from .textio import read_text

_COMPLEX_CHARS = str.maketrans({"(": " ", ")": " ", ",": " "})
_FIRST_CHAR = re.compile(r"\s*(\S?)")  # a line's first non-blank character ("" for a blank line), without copying it


@dataclass
class CsrFile:
    """Contents of one sparse-matrix file, in the file's own units and orbital order.

    R: (nR, 3) int; rows, cols: (nnz,) int orbital indices (spinor-interleaved for
    nspin 4); Ridx: (nnz,) index into R; values: (nnz,) float or complex.
    """

    path: str
    generation: str  # "old" | "2025"
    dim: int
    R: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    Ridx: np.ndarray
    values: np.ndarray
    header: dict[str, str] = field(default_factory=dict)

    @property
    def is_complex(self) -> bool:
        return np.iscomplexobj(self.values)


def _ints(line: str) -> list[int] | None:
    toks = line.split()
    try:
        return [int(t) for t in toks]
    except ValueError:
        return None


def _fromstring(text: str, dtype: type) -> np.ndarray | None:
    """Whitespace-separated numbers parsed in C (ten times faster than split + convert); None when a
    token is not a number of that type."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy's signal of a token it cannot read
        try:
            return np.fromstring(text, dtype=dtype, sep=" ")
        except (ValueError, DeprecationWarning):
            return None


def _numbers(text: str, dtype: type, path: str, lineno: int, kind: str) -> np.ndarray:
    """The numbers of one line, or ParseError naming the line."""
    out = _fromstring(text, dtype)
    if out is None:
        raise ParseError(path, f"non-numeric {kind}" if dtype is np.float64 else f"non-integer {kind}", lineno)
    return out


_POW10 = 10.0 ** np.arange(23)  # exactly representable powers of ten


def _fixed_scientific(line: str) -> np.ndarray | None:
    """Values of a line of ``%.Ne`` numbers (how ABACUS prints), parsed as integers, or None for any other line.

    ``-8.68630941e-07`` is read as the integers -868630941 and -7 and divided by 10^(8+7): one
    correctly rounded division of exact numbers, so the result is bit-identical to strtod's (values
    below 1e-14, where 10^k is not exact, go through Python's float parser), and integers parse
    four times faster than floats. Every token must have one '.', one 'e', and a
    mantissa of exactly N + 1 digits (or be zero); otherwise None (the general parser takes over).
    """
    n = line.count("e")
    if n == 0 or line.count(".") != n:
        return None
    first = line[:64].split(None, 1)[0]
    digits = first.find("e") - first.find(".") - 1
    if "." not in first or not 0 < digits <= 15:
        return None
    ints = _fromstring(line.replace(".", "").replace("e", " "), np.int64)
    if ints is None or len(ints) != 2 * n:
        return None
    mant, k = ints[0::2], digits - ints[1::2]
    am = np.abs(mant)
    if am.max() >= 10 ** (digits + 1) or np.count_nonzero(am < 10**digits) != np.count_nonzero(am == 0):
        return None
    mid = (k >= 0) & (k <= 22)
    if mid.all():
        return mant / _POW10[k]
    out = np.empty(n)
    out[mid] = mant[mid] / _POW10[k[mid]]
    big = (k < 0) & (k >= -22)  # |value| ≥ 10: an exact product, rounded once
    out[big] = mant[big] * _POW10[-k[big]]
    rest = np.nonzero(~(mid | big))[0]  # |value| < 1e-14 or ≥ 1e31, rare: Python's float parser
    out[rest] = [float(f"{m}e{-e}") for m, e in zip(mant[rest].tolist(), k[rest].tolist())]
    return out


def _floats(line: str, path: str, lineno: int) -> np.ndarray:
    """The real numbers of one line: the fixed-format fast path, else the general parser."""
    fast = _fixed_scientific(line)
    return fast if fast is not None else _numbers(line, np.float64, path, lineno, "matrix value")


def _parse_values(line: str, path: str, lineno: int) -> np.ndarray:
    """Real values, or complex ones from ``(re,im)`` tokens, of one line."""
    if _FIRST_CHAR.match(line).group(1) != "(":
        return _floats(line, path, lineno)
    flat = _floats(line.translate(_COMPLEX_CHARS), path, lineno)
    if len(flat) % 2:
        raise ParseError(path, "odd number of components in complex values", lineno)
    return flat[0::2] + 1j * flat[1::2]


def read_csr(path: str | Path) -> CsrFile:
    """Read an ABACUS sparse-matrix file of any generation (plain, .xz or .gz)."""
    path = Path(path)
    text = read_text(path)
    lines = text.splitlines()
    p = str(path)
    if not lines:
        raise ParseError(p, "empty file")
    header: dict[str, str] = {}
    # ---- header
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and lines[i].strip().startswith("STEP:"):
        generation = "old"
        m_dim = re.search(r"Matrix Dimension of .*?:\s*(\d+)", "\n".join(lines[i : i + 4]))
        m_num = re.search(r"Matrix number of .*?:\s*(\d+)", "\n".join(lines[i : i + 4]))
        if not (m_dim and m_num):
            raise ParseError(p, "old-format header without 'Matrix Dimension'/'Matrix number'", i + 1)
        dim, n_r = int(m_dim.group(1)), int(m_num.group(1))
        header["step"] = lines[i].split(":", 1)[1].strip()
        i += 3
    else:
        generation = "2025"
        dim = n_r = -1
        box = False
        while i < len(lines):
            s = lines[i].strip()
            m = re.match(r"^(\S+)\s*#\s*(.+)$", s)
            if m and not s.startswith("#"):
                header[m.group(2).strip()] = m.group(1)
            if "CSR Format" in s:
                box = True
            if box and s and not s.startswith("#"):
                break
            i += 1
        try:
            dim = int(header["number of localized basis"])
            n_r = int(header["number of Bravais lattice vector R"])
        except (KeyError, ValueError):
            raise ParseError(p, "not an ABACUS sparse-matrix file (no recognised header)") from None
    if dim <= 0:
        raise ParseError(p, f"invalid matrix dimension {dim}")
    # ---- data: a stream of (R line, values, columns, row pointers)
    body = [(k + 1, ln) for k, ln in enumerate(lines[i:], start=i) if _FIRST_CHAR.match(ln).group(1) not in ("", "#")]
    pos = 0
    Rs, rows_l, cols_l, ridx_l, vals_l = [], [], [], [], []

    def take(count: int, kind: str, start_line: int, parse) -> tuple[np.ndarray, int]:
        """The next ``count`` numbers (over one or more lines), parsed by ``parse(line, lineno)``; the last line number."""
        nonlocal pos
        parts: list[np.ndarray] = []
        n, last = 0, start_line
        while n < count:
            if pos >= len(body):
                raise ParseError(p, f"file ends inside the {kind} of a matrix block (truncated?)", last)
            last, ln = body[pos]
            parts.append(parse(ln, last))
            n += len(parts[-1])
            pos += 1
        if n != count:
            raise ParseError(p, f"expected {count} {kind}, found {n}", last)
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), last

    def ints(kind: str):
        return lambda ln, lineno: _numbers(ln, np.int64, p, lineno, kind)

    while pos < len(body):
        lineno, ln = body[pos]
        head = _ints(ln)
        if head is None or len(head) != 4:
            raise ParseError(p, f"expected 'Rx Ry Rz nnz', got {ln.strip()[:40]!r}", lineno)
        pos += 1
        R, nnz = head[:3], head[3]
        if nnz < 0:
            raise ParseError(p, f"negative number of entries {nnz}", lineno)
        if nnz == 0:
            # the 2025 generation always prints the row pointers (all zero) of an empty block; the old
            # one prints none, though some writers add them: taken when unambiguous (dim + 1 ≠ 4)
            if pos < len(body):
                nxt = _ints(body[pos][1])
                zeros = nxt is not None and len(nxt) == dim + 1 and not any(nxt)
                if generation == "2025":
                    if not zeros:
                        raise ParseError(p, f"expected the {dim + 1} zero row pointers of an empty block", body[pos][0])
                    pos += 1
                elif zeros and dim + 1 != 4:
                    pos += 1
            elif generation == "2025":
                raise ParseError(p, "file ends inside an empty matrix block (truncated?)", lineno)
            Rs.append(R)
            continue
        vals, vl = take(nnz, "values", lineno, lambda ln, k: _parse_values(ln, p, k))
        cols, cl = take(nnz, "column indices", vl, ints("column index"))
        ptr, pl = take(dim + 1, "row pointers", cl, ints("row pointer"))
        if ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
            raise ParseError(p, "inconsistent row pointers", pl)
        if cols.min() < 0 or cols.max() >= dim:
            raise ParseError(p, f"column index outside 0..{dim - 1}", cl)
        rows = np.repeat(np.arange(dim), np.diff(ptr))
        ridx = len(Rs)
        Rs.append(R)
        rows_l.append(rows)
        cols_l.append(cols)
        ridx_l.append(np.full(nnz, ridx))
        vals_l.append(vals)
    if generation == "old" and len(Rs) != n_r:
        raise ParseError(p, f"header announces {n_r} R vectors, file holds {len(Rs)} (truncated?)")
    if generation == "2025" and len(Rs) > n_r:
        raise ParseError(p, f"header announces {n_r} R vectors, file holds {len(Rs)}")
    if not vals_l:
        empty = np.zeros(0, dtype=np.int64)
        return CsrFile(p, generation, dim, np.array(Rs, dtype=np.int64).reshape(-1, 3), empty, empty, empty, np.zeros(0), header)
    complex_any = any(np.iscomplexobj(v) for v in vals_l)
    values = np.concatenate([v.astype(np.complex128) if complex_any else v for v in vals_l])
    return CsrFile(
        p,
        generation,
        dim,
        np.array(Rs, dtype=np.int64).reshape(-1, 3),
        np.concatenate(rows_l),
        np.concatenate(cols_l),
        np.concatenate(ridx_l),
        values,
        header,
    )


def write_csr(
    path: str | Path,
    generation: str,
    dim: int,
    R: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    Ridx: np.ndarray,
    values: np.ndarray,
    *,
    quantity: str = "H",
    complex_values: bool | None = None,
    spin_index: int = 1,
    n_spin: int = 1,
    structure_header: str = "",
) -> None:
    """Write a sparse matrix in an ABACUS generation ('old' or '2025'), any R order.

    rows/cols: orbital (or spinor) indices; values in the file's units (Ry for H).
    The caller writes to a temporary path and renames (see writers).
    """
    if generation not in ("old", "2025"):
        raise ValueError(f"unknown csr generation {generation!r}")
    if complex_values is None:
        complex_values = bool(np.iscomplexobj(values))
    R = np.asarray(R, dtype=np.int64).reshape(-1, 3)
    out: list[str] = []
    if generation == "old":
        out += ["STEP: 0", f"Matrix Dimension of {quantity}(R): {dim}", f"Matrix number of {quantity}(R): {len(R)}"]
    else:
        what = {"H": "H matrix", "S": "S matrix", "DM": "density matrix"}.get(quantity, quantity)
        out += [
            " --- Ionic Step 1 ---",
            f" # print {what} in real space {quantity}(R)",
            f" {n_spin} # number of spin directions",
            f" {spin_index} # spin index",
            f" {dim} # number of localized basis",
            f" {len(R)} # number of Bravais lattice vector R",
            "",
        ]
        if structure_header:
            out += [structure_header.rstrip("\n"), ""]
        out += [
            " #----------------------------------------------------------------------#",
            " #                               CSR Format                             #",
            " # The outer loop corresponds to the number of Bravais lattice vectors. #",
            " # The first line contains the index of the Bravais lattice vector      #",
            " # (Rx, Ry, Rz), followed by the number of non-zero elements.           #",
            " # The subsequent lines consist of three blocks of data, which are      #",
            " # values, column indices, row pointers.                                #",
            " #----------------------------------------------------------------------#",
            "",
        ]
    # one tall CSR matrix, rows (R, row): scipy's counting sort orders the entries by R, row, column
    from scipy.sparse import coo_matrix

    tall = coo_matrix((values, (np.asarray(Ridx, dtype=np.int64) * dim + rows, cols)), shape=(len(R) * dim, dim)).tocsr()
    tall.sort_indices()  # (a no-op where already sorted)
    if tall.nnz != len(values):
        raise ValueError("write_csr: an entry (R, row, column) is given twice")
    cols, values, indptr = tall.indices, tall.data, tall.indptr
    if complex_values:
        values = values.astype(complex, copy=False)
    elif np.iscomplexobj(values):
        values = values.real
    legacy = generation == "old"
    with open(path, "w") as fh:  # streamed: the text of a big cell is gigabytes
        fh.write("\n".join(out) + "\n")
        for r in range(len(R)):
            sl = slice(indptr[r * dim], indptr[(r + 1) * dim])
            nnz = sl.stop - sl.start
            rx, ry, rz = R[r]
            ptr = indptr[r * dim : (r + 1) * dim + 1] - indptr[r * dim]
            if legacy:  # "R nnz", then values, columns and row pointers on a line each (none when nnz = 0)
                fh.write(f"{rx} {ry} {rz} {nnz}\n")
                if nnz:
                    _line(fh, write_e, values[sl])
                    _line(fh, write_int, cols[sl])
                    _line(fh, write_int, ptr)
            else:  # the same under comment lines; empty value and column lines when nnz = 0 (as ABACUS 3.10+)
                fh.write(f" {rx} {ry} {rz} {nnz}\n # CSR values\n")
                if nnz:
                    _line(fh, write_e, values[sl])
                    fh.write(" # CSR column indices\n")
                    _line(fh, write_int, cols[sl])
                else:
                    fh.write("\n # CSR column indices\n\n")
                fh.write(" # CSR row pointers\n")
                _line(fh, write_int, ptr)
                if nnz:  # ABACUS leaves a blank line after a block, none after an empty one
                    fh.write("\n")


def _line(fh, write, values: np.ndarray) -> None:
    """One data line: a leading space, the numbers, a newline."""
    fh.write(" ")
    write(fh, values)
    fh.write("\n")
