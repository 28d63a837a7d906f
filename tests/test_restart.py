"""Starting files for the DFT code: density matrix, real-space density, ABACUS cube/csr/INPUT, SIESTA DM.

Physics checked against the codes' own outputs: the DM from the converged H equals ABACUS's
data-DMR file, the density from ABACUS's DM reproduces ABACUS's cube, and the DM from SIESTA's H
equals SIESTA's .DM.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nextham_dft.adapters.abacus.csr import read_csr
from nextham_dft.adapters.abacus.cube import read_cube
from nextham_dft.adapters.abacus.restart import fft_grid
from nextham_dft.adapters.abacus.run import canonical_transforms, csr_to_blocks
from nextham_dft.core.density import density_matrix, density_on_grid, electron_count
from nextham_dft.core.units import RY_TO_EV
from nextham_dft.registry import read_run

from .conftest import DATA, FIXTURES, need
from .test_cli import assert_clean_error, run

REF = DATA / "reference-density"


def abacus_dm(name, system):
    """ABACUS's own converged DM(R); for nspin 4 its charge part (ABACUS stores it in the ↑↑ slot)."""
    c = read_csr(need(REF / name) / "OUT.scf" / "data-DMR-sparse_SPIN0.csr.xz")
    m = csr_to_blocks([c], system.norb, system.kinds, canonical_transforms(system.bases), 1.0, overlap=False)
    return m.with_data(m.data[:, 0, 0].real.copy(), "none") if m.spin == "spinor" else m


@pytest.mark.parametrize("name", ["si_ns1", "alp_soc"])
def test_dm_from_converged_h_equals_abacus_dm(name):
    s = read_run(need(REF / name))
    k = s.full_kmesh()
    dm, ef = density_matrix(s.matrices["H"], s.matrices["S"], k.frac, k.weights, s.nelec, s.smearing)
    assert abs(ef - s.fermi_ev["H"]) < 1e-3
    assert electron_count(dm, s.matrices["S"]) == pytest.approx(s.nelec, abs=1e-8)
    ref = abacus_dm(name, s).aligned_to(dm)
    ours = dm.data if dm.spin == "none" else np.trace(dm.data, axis1=1, axis2=2).real
    assert np.abs(ours - ref.data).max() < 1e-6


@pytest.mark.parametrize("name", ["si_ns1", "alp_soc"])
def test_density_from_abacus_dm_reproduces_abacus_cube(name):
    s = read_run(need(REF / name))
    cube = read_cube(REF / name / "OUT.scf" / "SPIN1_CHG.cube.xz")
    assert cube.shape == fft_grid(s.lattice, {"ecutwfc": "60"})  # ABACUS's grid rule
    rho = density_on_grid(s, abacus_dm(name, s), cube.shape)
    dv = abs(np.linalg.det(s.lattice)) / rho.size
    assert rho.sum() * dv == pytest.approx(s.nelec, rel=1e-3)
    assert np.abs(rho - cube.values).sum() / np.abs(cube.values).sum() < 1e-3


def test_restart_command_writes_abacus_starting_files(tmp_path):
    src = need(REF / "alp_soc")
    out = tmp_path / "start"
    res = run("restart", str(src), "--source", "scf", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    names = {p.name for p in out.iterdir()}
    assert {"SPIN1_CHG.cube", "SPIN4_CHG.cube", "hrs1_nao.csr", "INPUT", "INPUT.init_chg_hr", "STRU", "KPT"} <= names
    s = read_run(src)
    # the converged H's own density equals ABACUS's converged cube
    mine, ref = read_cube(out / "SPIN1_CHG.cube"), read_cube(src / "OUT.scf" / "SPIN1_CHG.cube.xz")
    assert np.abs(mine.values - ref.values).sum() / np.abs(ref.values).sum() < 1e-3
    # no magnetisation in a non-magnetic SOC crystal
    assert np.abs(read_cube(out / "SPIN4_CHG.cube").values).max() < 1e-4 * np.abs(mine.values).max()
    # H(R) in the 2025 format reads back as the same matrix
    from nextham_dft.adapters.abacus.run import csr_to_blocks as c2b

    h = c2b([read_csr(out / "hrs1_nao.csr")], s.norb, s.kinds, canonical_transforms(s.bases), RY_TO_EV, False)
    assert h.max_abs_diff(s.matrices["H"]) < 1e-6
    text = (out / "INPUT").read_text()
    assert "init_chg             file" in text and "read_file_dir        ./" in text
    assert "init_chg             hr" in (out / "INPUT.init_chg_hr").read_text()
    # a second run refuses to overwrite, --force replaces
    assert_clean_error(run("restart", str(src), "--source", "scf", "--out", str(out)))
    assert run("restart", str(src), "--source", "scf", "--out", str(out), "--force").exit_code == 0


def test_restart_nspin1_writes_dm_that_reads_back(tmp_path):
    src = need(REF / "si_ns1")
    out = tmp_path / "start"
    assert run("restart", str(src), "--source", "scf", "--out", str(out)).exit_code == 0
    s = read_run(src)
    dm = csr_to_blocks([read_csr(out / "dmrs1_nao.csr")], s.norb, s.kinds, canonical_transforms(s.bases), 1.0, False)
    assert electron_count(dm, s.matrices["S"]) == pytest.approx(8.0, abs=1e-4)
    assert "init_chg             dm" in (out / "INPUT.init_chg_dm").read_text()


def test_restart_from_prediction_on_the_example(tmp_path):
    from .conftest import EXAMPLE

    out = tmp_path / "start"
    res = run("restart", str(need(EXAMPLE)), "--out", str(out))
    assert res.exit_code == 0, res.stderr
    cube = read_cube(out / "SPIN1_CHG.cube")
    s = read_run(EXAMPLE)
    dv = abs(np.linalg.det(s.lattice)) / cube.values.size
    assert cube.values.sum() * dv == pytest.approx(s.nelec, rel=2e-3)


def test_siesta_dm_from_converged_h_equals_siesta_dm(tmp_path):
    import sisl

    src = need(FIXTURES / "siesta" / "Si_pdos_k")
    out = tmp_path / "dm"
    res = run("restart", str(src), "--source", "scf", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = sisl.get_sile(str(out / "Si_pdos.DM")).read_density_matrix().tocsr(0)
        ref = sisl.get_sile(str(src / "Si_pdos.DM")).read_density_matrix().tocsr(0)
    # SIESTA saves the (mixed) DM of its last SCF step, converged to DM.Tolerance 1e-4
    assert abs(mine - ref).max() < 1e-2
    assert abs(mine - ref).mean() < 1e-4


def test_siesta_polarized_dm_and_fermi_level_equal_siesta_own(tmp_path):
    """bcc Fe, collinear spin, mesh from kgrid.Cutoff (inferred from .KP): E_F and both DM channels."""
    import sisl

    src = need(FIXTURES / "siesta" / "fe_bcc_simple")
    out = tmp_path / "dm"
    res = run("restart", str(src), "--source", "scf", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    info = __import__("json").loads((out / "restart.json").read_text())
    assert abs(info["fermi_ev"] - (-5.99796896)) < 1e-3  # SIESTA's own E_F (fe.EIG)
    assert info["electrons"] == pytest.approx(16.0, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = sisl.get_sile(str(out / "fe.DM")).read_density_matrix()
        ref = sisl.get_sile(str(src / "fe.DM")).read_density_matrix()
    for c in (0, 1):  # SIESTA's DM is its last, mixed iteration at DM.Tolerance 1e-3
        d = abs(mine.tocsr(c) - ref.tocsr(c))
        assert d.max() < 0.05 and d.mean() < 1e-3


def test_restart_collinear_channels_split_the_nspin1_density(tmp_path):
    """nspin 2 with identical channels (made from the Si run): each channel holds half of the nspin 1 density."""
    from nextham_dft.adapters.abacus.restart import write_restart

    src = need(REF / "si_ns1")
    s = read_run(src)
    h = s.matrices["H"]
    s2 = read_run(src)
    s2.spin_mode = "collinear"
    s2.matrices["H"] = h.with_data(np.stack([h.data, h.data], axis=1), "collinear")
    a, b = tmp_path / "ns1", tmp_path / "ns2"
    a.mkdir()
    b.mkdir()
    write_restart(a, src, s, "H")
    info = write_restart(b, src, s2, "H")
    assert info["electrons_on_grid"] == pytest.approx(8.0, rel=1e-3)
    one = read_cube(a / "SPIN1_CHG.cube").values
    up, dn = read_cube(b / "SPIN1_CHG.cube").values, read_cube(b / "SPIN2_CHG.cube").values
    assert np.allclose(up, 0.5 * one, atol=1e-6 * one.max()) and np.allclose(up, dn)
    assert {"hrs1_nao.csr", "hrs2_nao.csr", "dmrs1_nao.csr", "dmrs2_nao.csr"} <= {p.name for p in b.iterdir()}


@pytest.mark.parametrize("case,label", [("Bi_hexagonal", "Bi_hexagonal"), ("Pt2_soc", "Pt2_xx")])
def test_siesta_spin_orbit_dm_equals_siesta_dm(tmp_path, case, label):
    """SOC: all 8 spin components of the DM from the converged H equal SIESTA's own .DM."""
    import sisl

    src = need(FIXTURES / "siesta" / case)
    out = tmp_path / "dm"
    res = run("restart", str(src), "--source", "scf", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = sisl.get_sile(str(out / f"{label}.DM")).read_density_matrix()
        ref = sisl.get_sile(str(src / f"{label}.DM")).read_density_matrix()
    assert mine.spin.is_spinorbit
    for c in range(8):
        d = abs(mine.tocsr(c) - ref.tocsr(c))
        assert d.max() < 0.02 and d.mean() < 1e-3, c
