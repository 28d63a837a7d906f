"""Fast, exact text formatting of numeric arrays for ABACUS's text files.

``format_e(v)`` is byte-for-byte ``" ".join(f"{x:.8e}" for x in v)`` and ``format_int(v)`` is
``" ".join(map(str, v))``, built with array arithmetic instead of one Python call per number (the
sparse H(R) of a 1,000-atom SOC cell holds ~70 M numbers). A value whose rounding the float
arithmetic cannot decide (within 1e-5 of a half unit in the last digit, ~2 values in 10⁵), and any
non-finite or extreme one, is formatted by Python itself, so the result never differs from printf's.
"""

from __future__ import annotations

import numpy as np

_ZERO = ord("0")
_FILL = 0  # a byte that is dropped: the optional '-' and the third exponent digit


with np.errstate(over="ignore"):  # 10**k for k in [-330, 330] (inf above 308: never used for the values kept)
    _POW10 = np.power(10.0, np.arange(-330, 331))
_EXP = np.array([[ord("-") if k < 0 else ord("+"), abs(k) // 100 + _ZERO if abs(k) >= 100 else _FILL,
                  (abs(k) // 10) % 10 + _ZERO, abs(k) % 10 + _ZERO] for k in range(-330, 331)], dtype=np.uint8)
_FOUR = np.array([[ord(c) for c in f"{i:04d}"] for i in range(10000)], dtype=np.uint8)  # "0000" … "9999"


def _sci_fields(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) uint8: each value as [sign]d.dddddddde[±][e]ee (8 digits after the point), absent
    characters as _FILL; and the mask of values to leave to Python (undecidable, non-finite, extreme)."""
    digits = 8
    n = len(v)
    a = np.abs(v)
    zero = a == 0.0
    safe = np.isfinite(a) & (((a > 1e-290) & (a < 1e290)) | zero)
    lo_m, hi_m = 10.0**digits, 10.0 ** (digits + 1)
    with np.errstate(all="ignore"):  # zeros, inf and nan are masked out below
        e = np.floor(np.log10(np.where(safe & ~zero, a, 1.0))).astype(np.int64)
        for _ in range(2):  # log10 can miss the exponent by one next to a power of ten: correct and redo
            scaled = a * _POW10[digits - e + 330]
            fl = np.floor(scaled)
            low, high = fl < lo_m, fl >= hi_m
            fix = (low | high) & ~zero & safe
            if not fix.any():
                break
            e = e + high * fix - low * fix
        frac = scaled - fl
        exact = (safe & (np.abs(frac - 0.5) > 1e-5) & (fl >= lo_m) & (fl < hi_m)) | zero
        m = np.where(exact & ~zero, np.floor(scaled + 0.5), 0.0).astype(np.int64)
    carry = m == 10 ** (digits + 1)  # 9.999999996 → 1.00000000e+01
    m[carry] = 10**digits
    e = np.where(exact & ~zero, e + carry, 0)
    out = np.empty((n, 16), dtype=np.uint8)
    out[:, 0] = np.where(np.signbit(v), ord("-"), _FILL)
    out[:, 1] = m // 10**8 + _ZERO
    out[:, 2] = ord(".")
    rest = m % 10**8
    out[:, 3:7] = _FOUR[rest // 10**4]
    out[:, 7:11] = _FOUR[rest % 10**4]
    out[:, 11] = ord("e")
    out[:, 12:16] = _EXP[e + 330]
    return out, ~exact


def _join(fields: np.ndarray) -> str:
    """The rows of a (n, w) uint8 array, fill bytes dropped, as one string (separators included)."""
    flat = fields.reshape(-1)
    return flat[flat != _FILL].tobytes().decode("ascii")


def _python_fields(v: np.ndarray, digits: int, width: int) -> np.ndarray:
    """The same fields as :func:`_sci_fields`, formatted by Python one value at a time (the few it leaves)."""
    rows = np.full((len(v), width), _FILL, dtype=np.uint8)
    for i, x in enumerate(v.tolist()):
        b = f"{x:.{digits}e}".encode()
        rows[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return rows


def _sci(v: np.ndarray) -> np.ndarray:
    f, slow = _sci_fields(v)
    if slow.any():  # undecidable roundings, inf/nan, extreme exponents: Python's own formatting
        f[slow] = _python_fields(v[slow], 8, f.shape[1])
    return f


#: numbers formatted at once (bounds the temporary digit arrays: ~100 bytes per number)
CHUNK = 1 << 20


def format_e(values: np.ndarray) -> str:
    """``" ".join(f"{x:.8e}" for x in values)`` for real values, or with complex ones
    ``" ".join(f"({x.real:.8e},{x.imag:.8e})" ...)`` (ABACUS's csr precision)."""
    v = np.asarray(values).ravel()
    if v.size > CHUNK:
        return " ".join(format_e(v[i : i + CHUNK]) for i in range(0, v.size, CHUNK))
    if v.size == 0:
        return ""
    if np.iscomplexobj(v):
        re, im = _sci(v.real.astype(float)), _sci(v.imag.astype(float))
        col = lambda c: np.full((len(re), 1), ord(c), dtype=np.uint8)  # noqa: E731
        fields = np.hstack([col("("), re, col(","), im, col(")"), col(" ")])
    else:
        f = _sci(v.astype(float))
        fields = np.hstack([f, np.full((len(f), 1), ord(" "), dtype=np.uint8)])
    return _join(fields)[:-1]


def format_int(values: np.ndarray) -> str:
    """``" ".join(map(str, values))`` for integers."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if v.size > CHUNK:
        return " ".join(format_int(v[i : i + CHUNK]) for i in range(0, v.size, CHUNK))
    if v.size == 0:
        return ""
    neg = v < 0
    a = np.abs(v)
    nd = len(str(int(a.max())))
    p = 10 ** np.arange(nd - 1, -1, -1, dtype=np.int64)
    d = (a[:, None] // p[None, :]) % 10
    lead = np.cumsum(d, axis=1) == 0  # leading zeros (the last digit always stays)
    lead[:, -1] = False
    fields = np.full((len(v), nd + 2), _FILL, dtype=np.uint8)
    fields[:, 0] = np.where(neg, ord("-"), _FILL)
    fields[:, 1:-1] = np.where(lead, _FILL, d + _ZERO)
    fields[:, -1] = ord(" ")
    return _join(fields)[:-1]


def write_e(fh, values: np.ndarray) -> None:
    """Write :func:`format_e` of ``values`` to a text file, CHUNK numbers at a time (no whole-file string)."""
    v = np.asarray(values).ravel()
    for i in range(0, v.size, CHUNK):
        fh.write((" " if i else "") + format_e(v[i : i + CHUNK]))


def write_int(fh, values: np.ndarray) -> None:
    """Write :func:`format_int` of ``values`` to a text file, CHUNK numbers at a time."""
    v = np.asarray(values).ravel()
    for i in range(0, v.size, CHUNK):
        fh.write((" " if i else "") + format_int(v[i : i + CHUNK]))
