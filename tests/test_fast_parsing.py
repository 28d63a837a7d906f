"""The fast paths of reading: fixed-format numbers parsed as integers, keys made unique without sorting.

Each must give exactly what the general path gives (bit for bit), and fall back, not guess, on
anything else.
"""

from __future__ import annotations

import numpy as np
import pytest

from nextham_dft.adapters.abacus.csr import _COMPLEX_CHARS, _fixed_scientific, read_csr
from nextham_dft.adapters.abacus.textio import read_text
from nextham_dft.core.blocks import unique_columns, unique_rows
from nextham_dft.errors import ParseError

from .conftest import DATA, FIXTURES, need


def _value_lines(path):
    for line in read_text(path).splitlines():
        if "e" in line and "." in line and not line.lstrip().startswith("#") and len(line.split()) > 4:
            yield line.translate(_COMPLEX_CHARS)


@pytest.mark.parametrize("rel", [
    "abacus/Si2_nspin1_207_NO_KP_OH2",  # old format, nspin 1
    "abacus/C_atom_nspin4_newfmt_scf_out_hsr_spin4",  # 2025 format, complex
    "abacus/GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310",  # 3.10 LTS
])
def test_fixed_scientific_is_bit_identical_to_float_on_real_files(rel):
    files = sorted(p for p in need(FIXTURES / rel).rglob("*") if ".csr" in p.name and "rR" not in p.name)
    checked = 0
    for f in files:
        for line in _value_lines(f):
            fast = _fixed_scientific(line)
            if fast is None:
                continue
            assert np.array_equal(fast, np.array([float(t) for t in line.split()]))
            checked += len(fast)
    assert checked > 100


def test_fixed_scientific_handles_tiny_and_big_values_exactly():
    line = " ".join(f"{v:.8e}" for v in [1.5, -2.25e-17, 3.3e-300, 12.5, -4.0e33, 0.0, 7.123456789e-9])
    assert np.array_equal(_fixed_scientific(line), np.array([float(t) for t in line.split()]))


@pytest.mark.parametrize("line", [
    "1.5 2.25 3.0",  # no exponent
    "1.5e-03 2.25e+00",  # mantissas of different lengths
    "1.50000000e-03 nan",
    "1.50000000e-03 2.0000000e+00",  # one digit short: would be read 10x too small
    "1.50000000e-03 2.00000000e+00 x",
])
def test_fixed_scientific_declines_other_formats(line):
    assert _fixed_scientific(line) is None


def _old_csr(values: str, cols: str = "0 1 1", ptr: str = "0 2 3") -> str:
    return "STEP: 0\nMatrix Dimension of H(R): 2\nMatrix number of H(R): 1\n0 0 0 3\n" + f"{values}\n{cols}\n{ptr}\n"


def test_reader_takes_any_float_format_and_rejects_bad_tokens(tmp_path):
    f = tmp_path / "data-HR-sparse_SPIN0.csr"
    f.write_text(_old_csr("1.5 2.25e-1 -3"))
    assert np.array_equal(read_csr(f).values, [1.5, 0.225, -3.0])
    f.write_text(_old_csr("1.5 abc -3"))
    with pytest.raises(ParseError, match="non-numeric"):
        read_csr(f)
    f.write_text(_old_csr("1 2 3", cols="0 1.5 1"))
    with pytest.raises(ParseError, match="non-integer column"):
        read_csr(f)


def test_real_run_reads_the_same_through_both_parsers(monkeypatch):
    path = need(DATA / "runs")
    run = sorted(p for p in path.iterdir() if p.is_dir())[0]
    f = sorted(run.glob("OUT.*/*HR*csr*"))[0]
    fast = read_csr(f)
    monkeypatch.setattr("nextham_dft.adapters.abacus.csr._fixed_scientific", lambda line: None)
    slow = read_csr(f)
    assert np.array_equal(fast.values, slow.values) and np.array_equal(fast.cols, slow.cols)


@pytest.mark.parametrize("spread", [3, 10**7])  # a lookup table over the key range, and the sort
def test_unique_columns_equals_numpy_unique(spread):
    rng = np.random.default_rng(1)
    a = rng.integers(-spread, spread, size=(5000, 4))
    a[2500:] = a[:2500]  # duplicates
    u, inv = unique_columns([a[:, c] for c in range(4)])
    ref_u, ref_inv = np.unique(a, axis=0, return_inverse=True)
    assert np.array_equal(u, ref_u) and np.array_equal(inv, ref_inv.reshape(-1))
    u2, inv2 = unique_rows(a)
    assert np.array_equal(u2, ref_u) and np.array_equal(u2[inv2], a)
