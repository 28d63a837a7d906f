"""OpenMX runs: .scfout of OpenMX 3.9 (layout 3) and of 3.7/3.8 (layout 0), the .dat input, .Band eigenvalues.

The OpenMX fixture has no licence, so nothing of it is copied into the project: the tests read
it from ../shared and write any derived file (other layouts, broken copies) into tmp_path.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from nextham_dft.adapters.openmx import OpenMXAdapter, read_run
from nextham_dft.adapters.openmx.scfout import read_scfout
from nextham_dft.errors import NexthamError, ParseError
from nextham_dft.testing import eigenvalue_error, orbital_convention_residual

from .conftest import FIXTURES, need
from .test_cli import assert_clean_error, run

FE = FIXTURES / "openmx" / "Fe_bcc_spinpol_openMx2TB2J"


def fe_dir():
    return need(FE)


def test_reads_structure_basis_and_spin():
    s = read_run(fe_dir())
    assert s.meta["code"] == "openmx" and "3.9" in s.meta["generation"]
    assert s.formula == "Fe2" and s.spin_mode == "collinear" and not s.soc
    assert [b.label() for b in s.bases] == ["2s2p1d"] and s.bases[0].family == "openmx-pao"
    assert np.allclose(s.lattice, 2.7839 * np.eye(3), atol=1e-4)
    assert np.allclose(s.frac_positions[1], 0.5, atol=1e-6)
    assert s.nelec == pytest.approx(28.0)  # 8 + 6 per atom from the species' initial occupations


def test_eigenvalues_match_openmx_band_file():
    s = read_run(fe_dir())
    near, worst = eigenvalue_error(s, "H")
    assert near < 1e-6 and worst < 1e-6  # eV; the .Band file has 15 decimals in Hartree


def test_fermi_level_from_our_bands_matches_openmx():
    s = read_run(fe_dir())
    # OpenMX's own mesh (11³) is expensive here; a 6³ mesh already places E_F within 0.1 eV
    from nextham_dft.core.system import KPoints

    k = KPoints.from_mesh((6, 6, 6), (0, 0, 0))
    ef = s.fermi_from_bands(s.bands("H", k.frac), k.weights)
    assert abs(ef - s.fermi_ev["H"]) < 0.1


def test_orbital_convention_table_is_proven_by_the_overlap():
    """Every s–l overlap block points along the e3nn harmonic of its bond: order and signs are right."""
    worst, count = orbital_convention_residual(read_run(fe_dir()))
    assert count > 100 and worst < 1e-8


def _layout_parts(path):
    """The raw sections of a layout-3 scfout: (header ints, geometry bytes, arrays (13, nnz), tail, nblk)."""
    data = path.read_bytes()
    sc = read_scfout(path)
    sec = sc.sections
    nnz, nblk = len(sc.rows), sc.spin_switch + 1
    head = data[: sec["order_max"][1]]
    geo = data[slice(*sec["geometry"])]
    a = np.frombuffer(data[sec["Hks"][0] : sec["iDM"][1]], dtype="<f8").reshape(-1, nnz)
    tail = data[slice(*sec["tail"])]
    return head, geo, a, tail, nblk


def test_layout_0_of_openmx_3_8_reads_the_same(tmp_path):
    head, geo, a, tail, nblk = _layout_parts(fe_dir() / "fe.scfout")
    ints = list(struct.unpack("<7i", head))
    ints[1] = ints[1] % 4  # version 0: the plain spin switch, no order_max
    hks, olp, po, dm = a[:nblk], a[nblk], a[nblk + 1 : nblk + 4], a[nblk + 7 : 2 * nblk + 7]
    body = np.concatenate([hks, olp[None], po, dm]).astype("<f8").tobytes()
    tail_v0 = tail  # Solver, ChemP..., input text: unchanged
    run_dir = tmp_path / "v0"
    run_dir.mkdir()
    (run_dir / "fe.scfout").write_bytes(struct.pack("<6i", *ints[:6]) + geo + body + tail_v0)
    shutil.copy(FE / "fe.Band", run_dir / "fe.Band")
    s0, s3 = read_run(run_dir), read_run(fe_dir())
    assert "3.8" in s0.meta["generation"]
    assert s0.matrices["H"].max_abs_diff(s3.matrices["H"]) == 0.0
    assert s0.matrices["S"].max_abs_diff(s3.matrices["S"]) == 0.0
    assert eigenvalue_error(s0, "H")[0] < 1e-6


def test_noncollinear_layout_assembles_spinor_blocks(tmp_path):
    """A spin-3 file made from the collinear one (no up-down coupling): bands = up ∪ down."""
    head, geo, a, tail, nblk = _layout_parts(fe_dir() / "fe.scfout")
    ints = list(struct.unpack("<7i", head))
    ints[1] = 3 * 4 + 3
    nnz = a.shape[1]
    z = np.zeros((1, nnz))
    hks = np.concatenate([a[:2], z, z])
    ihks = np.zeros((3, nnz))
    rest = a[nblk : nblk + 7]  # OLP, OLPpo (3), OLPmo (3)
    dm = np.concatenate([a[nblk + 7 : nblk + 9], z, z])
    idm = np.zeros((2, nnz))
    body = np.concatenate([hks, ihks, rest, dm, idm]).astype("<f8").tobytes()
    run_dir = tmp_path / "nc"
    run_dir.mkdir()
    (run_dir / "fe.scfout").write_bytes(struct.pack("<7i", *ints) + geo + body + tail)
    nc, col = read_run(run_dir), read_run(fe_dir())
    assert nc.spin_mode == "noncollinear" and nc.matrices["H"].spin == "spinor"
    k = np.array([[0.1, 0.2, 0.3], [0.0, 0.5, 0.25]])
    e_nc = nc.bands("H", k)
    e_col = col.bands("H", k)
    assert np.allclose(e_nc, np.sort(np.concatenate([e_col[0], e_col[1]], axis=1), axis=1), atol=1e-8)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    data = (fe_dir() / "fe.scfout").read_bytes()
    bad = tmp_path / "cut"
    bad.mkdir()
    (bad / "fe.scfout").write_bytes(data[: len(data) // 3])
    with pytest.raises(ParseError, match="truncated"):
        read_run(bad)
    res = run("info", str(bad))
    assert_clean_error(res)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.scfout").write_bytes(b"\xff" * 64)
    with pytest.raises(NexthamError):
        read_run(junk)


def test_missing_input_is_a_clear_error(tmp_path):
    """A scfout without its embedded input and no .dat: the species are unknown."""
    head, geo, a, tail, nblk = _layout_parts(fe_dir() / "fe.scfout")
    cut = tail[: 4 + 80] + struct.pack("<i", 0)
    d = tmp_path / "noinput"
    d.mkdir()
    (d / "fe.scfout").write_bytes(head + geo + a.astype("<f8").tobytes() + cut)
    res = run("info", str(d))
    assert_clean_error(res)
    shutil.copy(FE / "Febcc.dat", d / "Febcc.dat")
    assert read_run(d).formula == "Fe2"


def test_cli_info_bands_and_predict_refusal(tmp_path):
    d = fe_dir()
    assert OpenMXAdapter().detect(d)
    res = run("info", str(d), "--json")
    assert res.exit_code == 0, res.stderr
    assert '"code": "openmx"' in res.output
    res = run("bands", str(d), "--source", "scf", "--kpoints", "path", "--out", str(tmp_path / "b"), "--density", "8")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "b" / "bands.png").is_file()
    res = run("predict", str(d), "--out", str(tmp_path / "p"))
    assert_clean_error(res)


def test_zeroth_step_is_recognised_from_scf_maxiter(tmp_path):
    """A .scfout whose embedded input says scf.maxIter 1 is the zeroth step; both steps side by side."""
    data = (fe_dir() / "fe.scfout").read_bytes()
    run_dir = tmp_path / "run"
    (run_dir / "h0").mkdir(parents=True)
    (run_dir / "scf").mkdir()
    old = b"scf.maxIter                 100"
    assert old in data
    (run_dir / "h0" / "fe.scfout").write_bytes(data.replace(old, b"scf.maxIter                   1"))
    (run_dir / "scf" / "fe.scfout").write_bytes(data)
    s = read_run(run_dir)
    assert s.meta["zeroth_step"] == "h0/fe.scfout" and s.meta["converged_step"] == "scf/fe.scfout"
    assert set(s.matrices) == {"H0", "H", "S"}


def test_restart_is_refused_cleanly_for_openmx(tmp_path):
    """No starting-file writer for OpenMX: one line, non-zero exit, no output folder left behind."""
    res = run("restart", str(fe_dir()), "--source", "scf", "--out", str(tmp_path / "start"))
    assert_clean_error(res)
    assert not (tmp_path / "start").exists()
