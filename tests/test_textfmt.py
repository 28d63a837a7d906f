"""Array formatting for ABACUS text files: byte-for-byte what Python's own formatting prints."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nextham_dft.adapters.abacus import textfmt
from nextham_dft.adapters.abacus.textfmt import format_e, format_int, write_e, write_int


def _py(v) -> str:
    if np.iscomplexobj(v):
        return " ".join(f"({x.real:.8e},{x.imag:.8e})" for x in v)
    return " ".join(f"{x:.8e}" for x in v)


def test_edge_values_and_rounding_borders():
    p = 10.0 ** np.arange(-300, 300)
    v = np.concatenate([
        [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 2.2e-308, 1e-300, 1e300, 1.7e308, 0.1, 0.5, 1.0, 10.0],
        p, np.nextafter(p, 0), np.nextafter(p, np.inf),
        9.999999995 * 10.0 ** np.arange(-20, 20),  # just below a carry: printf keeps 9.99999999
        9.9999999996 * 10.0 ** np.arange(-20, 20),  # rounds up and carries into the exponent
        (np.arange(1, 20000) * 10 + 5) * 1e-10,  # decimal halves, which binary cannot hold exactly
    ])
    v = np.concatenate([v, -v])
    assert format_e(v) == _py(v)


def test_random_magnitudes_real_and_complex():
    rng = np.random.default_rng(7)
    v = rng.normal(size=50000) * 10.0 ** rng.integers(-40, 40, 50000)
    assert format_e(v) == _py(v)
    c = v[:25000] + 1j * v[25000:]
    assert format_e(c) == _py(c)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=50))
def test_any_floats(xs):
    v = np.array(xs, dtype=float)
    assert format_e(v) == _py(v)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(2**62), max_value=2**62), min_size=0, max_size=50))
def test_any_integers(xs):
    assert format_int(np.array(xs, dtype=np.int64)) == " ".join(map(str, xs))


def test_chunked_writes_equal_the_whole(monkeypatch):
    monkeypatch.setattr(textfmt, "CHUNK", 7)
    rng = np.random.default_rng(1)
    v = rng.normal(size=100) + 1j * rng.normal(size=100)
    i = rng.integers(0, 10**6, 100)
    fe, fi = io.StringIO(), io.StringIO()
    write_e(fe, v)
    write_int(fi, i)
    assert fe.getvalue() == format_e(v) == _py(v)
    assert fi.getvalue() == format_int(i) == " ".join(map(str, i.tolist()))


def test_csr_text_of_a_small_matrix_both_generations(tmp_path):
    """The exact text written, an R without entries included (laid out as ABACUS prints one)."""
    from nextham_dft.adapters.abacus.csr import read_csr, write_csr

    args = (4, np.array([[0, 0, 0], [1, 0, 0]]), np.array([0, 2]), np.array([0, 1]), np.array([0, 0]),
            np.array([1.5, -2e-7]))
    write_csr(tmp_path / "old", "old", *args)
    assert (tmp_path / "old").read_text() == ("STEP: 0\nMatrix Dimension of H(R): 4\nMatrix number of H(R): 2\n"
                                              "0 0 0 2\n 1.50000000e+00 -2.00000000e-07\n 0 1\n 0 1 1 2 2\n1 0 0 0\n")
    write_csr(tmp_path / "new", "2025", *args)
    text = (tmp_path / "new").read_text()
    assert text.endswith(" 0 0 0 2\n # CSR values\n 1.50000000e+00 -2.00000000e-07\n # CSR column indices\n 0 1\n"
                         " # CSR row pointers\n 0 1 1 2 2\n\n 1 0 0 0\n # CSR values\n\n # CSR column indices\n\n"
                         " # CSR row pointers\n 0 0 0 0 0\n")
    for name in ("old", "new"):
        c = read_csr(tmp_path / name)
        assert c.dim == 4 and len(c.R) == 2 and np.allclose(c.values, [1.5, -2e-7])


def test_empty_blocks_of_a_three_orbital_matrix_read_back(tmp_path):
    """dim + 1 = 4: an empty block's zero row pointers look like an 'Rx Ry Rz nnz' line; the 2025
    generation always prints them, so they are taken; a file cut inside such a block is refused."""
    import pytest

    from nextham_dft.adapters.abacus.csr import read_csr, write_csr
    from nextham_dft.errors import ParseError

    R = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    write_csr(tmp_path / "m", "2025", 3, R, np.array([0, 2]), np.array([0, 1]), np.array([0, 0]), np.array([1.5, 2.0]))
    c = read_csr(tmp_path / "m")
    assert c.R.tolist() == R.tolist() and np.allclose(c.values, [1.5, 2.0])
    text = (tmp_path / "m").read_text()
    (tmp_path / "cut").write_text(text[: text.rindex(" # CSR row pointers")])
    with pytest.raises(ParseError):
        read_csr(tmp_path / "cut")
