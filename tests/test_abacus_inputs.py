"""ABACUS text inputs: STRU position modes and latname cells, KPT kinds, compressed files, logs."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from nextham_dft.adapters.abacus import read_run
from nextham_dft.adapters.abacus.csr import read_csr
from nextham_dft.adapters.abacus.inputs import lattice_from_latname, read_kpt, read_stru
from nextham_dft.adapters.abacus.outputs import read_band_txt, read_eig_occ
from nextham_dft.core.units import BOHR_TO_ANG
from nextham_dft.errors import ParseError

from .conftest import EXAMPLE, FIXTURES, need

STRU_HEAD = """ATOMIC_SPECIES
Si 28.0 Si.upf upf201
As 74.9 As.upf

NUMERICAL_ORBITAL
Si.orb
As.orb

LATTICE_CONSTANT
{a0}

{lattice}
ATOMIC_POSITIONS
{mode}

Si // comment
0.5
1
{p0} 1 1 1 mag 0 0 1.5
As
0.0
1
{p1} m 0 0 0 mag 2.0 angle1 90 angle2 0
"""


def _write(tmp_path, **kw):
    p = tmp_path / "STRU"
    p.write_text(STRU_HEAD.format(**kw))
    return p


def test_position_modes_agree(tmp_path):
    a0 = 10.2
    lat = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    frac = np.array([[0.0, 0.0, 0.0], [0.25, 0.26, 0.27]])
    cart_ang = frac @ lat * a0 * BOHR_TO_ANG
    L = "LATTICE_VECTORS\n" + "\n".join(" ".join(map(str, r)) for r in lat) + "\n"
    fmt = lambda x: " ".join(f"{v:.12f}" for v in x)  # noqa: E731
    variants = {
        "Direct": frac,
        "Cartesian": frac @ lat,
        "Cartesian_au": frac @ lat * a0,
        "Cartesian_angstrom": cart_ang,
        "Cartesian_angstrom_center_xyz": cart_ang - np.array([0.5, 0.5, 0.5]) @ lat * a0 * BOHR_TO_ANG,
    }
    for mode, x in variants.items():
        s = read_stru(_write(tmp_path, a0=a0, lattice=L, mode=mode, p0=fmt(x[0]), p1=fmt(x[1])))
        assert np.allclose(s.positions, cart_ang, atol=1e-9), mode
        assert s.labels == ["Si", "As"]
    assert np.allclose(s.magmom[0], [0, 0, 1.5]) and np.allclose(s.magmom[1], [2.0, 0, 0], atol=1e-12)


def test_latname_cells(tmp_path):
    s = read_stru(_write(tmp_path, a0=10.2, lattice="", mode="Direct", p0="0 0 0", p1="0.25 0.25 0.25"), latname="fcc")
    assert np.allclose(s.lattice, lattice_from_latname("fcc", []) * 10.2 * BOHR_TO_ANG)
    for name, params in [("hexagonal", [1.6]), ("trigonal", [0.3]), ("bct", [1.4]), ("bco", [1.1, 1.3]),
                         ("sm", [1.1, 1.2, 0.2]), ("triclinic", [1.1, 1.2, 0.1, 0.2, 0.3])]:
        v = lattice_from_latname(name, params)
        assert abs(np.linalg.det(v)) > 0.1
    with pytest.raises(ValueError):
        lattice_from_latname("hexagonal", [])


def test_stru_errors(tmp_path):
    with pytest.raises(ParseError, match="LATTICE_VECTORS"):
        read_stru(_write(tmp_path, a0=1, lattice="", mode="Direct", p0="0 0 0", p1="0 0 0"))
    with pytest.raises(ParseError, match="position mode"):
        read_stru(_write(tmp_path, a0=1, lattice="LATTICE_VECTORS\n1 0 0\n0 1 0\n0 0 1\n", mode="Weird", p0="0 0 0", p1="0 0 0"))


def test_kpt_kinds(tmp_path):
    p = tmp_path / "KPT"
    p.write_text("K_POINTS\n0\nMP\n3 4 5 0.5 0 0\n")
    k = read_kpt(p)
    assert k.kind == "mesh" and k.mesh == (3, 4, 5) and not k.gamma_centred and k.shift == (0.5, 0, 0)
    p.write_text("K_POINTS\n2\nDirect\n0 0 0 1\n0.5 0 0 3\n")
    k = read_kpt(p)
    assert k.kind == "list" and np.allclose(k.weights, [0.25, 0.75])
    line = read_kpt(need(FIXTURES / "abacus" / "GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310" / "KPT.nscf"))
    band = read_band_txt(FIXTURES / "abacus" / "GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310" / "OUT.ABACUS" / "band.txt")
    assert line.kind == "line" and len(line.kpoints) == band.shape[0]
    assert line.labels[0] == "G"


def test_eig_occ_reader():
    e = read_eig_occ(need(FIXTURES / "abacus" / "GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310" / "OUT.ABACUS" / "eig_occ.txt"))
    assert e.ndim == 2 and e.shape[0] > 1 and np.all(np.diff(e, axis=1) >= -1e-9)


def test_gzip_and_plain_read_the_same(tmp_path):
    import lzma

    src = need(EXAMPLE / "OUT.h0" / "data-SR-sparse_SPIN0.csr.xz")
    raw = lzma.decompress(src.read_bytes())
    (tmp_path / "a.csr").write_bytes(raw)
    (tmp_path / "b.csr.gz").write_bytes(gzip.compress(raw))
    a, b, c = read_csr(src), read_csr(tmp_path / "a.csr"), read_csr(tmp_path / "b.csr.gz")
    assert np.array_equal(a.values, b.values) and np.array_equal(a.values, c.values)


def test_log_is_the_fallback_for_missing_inputs(tmp_path):
    run = tmp_path / "r"
    shutil.copytree(need(EXAMPLE), run)
    (run / "INPUT.h0").unlink()
    (run / "INPUT.scf").unlink()
    s = read_run(run, orbital_dir=run)
    assert s.meta["zeroth_step"] == "OUT.h0" and s.meta["converged_step"] == "OUT.scf"
    assert s.nelec == 8.0
