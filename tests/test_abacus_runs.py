"""ABACUS runs read as a user's run directory: eigenvalues equal ABACUS's own."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nextham_dft.adapters.abacus import find_steps, read_run
from nextham_dft.adapters.abacus.csr import read_csr
from nextham_dft.adapters.abacus.writers import write_hs
from nextham_dft.core.kspace import KAssembler
from nextham_dft.errors import RunDirectoryError
from nextham_dft.testing import eigenvalue_error, orbital_convention_residual

from .conftest import DATA, EXAMPLE, FIXTURES, need

pytestmark = pytest.mark.abacus
RUNS = ["s0221", "s0089", "t0002", "t0043", "t0045"]


def window_error(system, tag: str) -> float:
    """Largest |ours - ABACUS| (eV) over bands within 10 eV of E_F at the run's k-points."""
    return eigenvalue_error(system, tag)[0]


@pytest.mark.parametrize("run", RUNS)
def test_shared_run_eigenvalues_match_istate(run):
    system = read_run(need(DATA / "runs" / run))
    assert system.meta["zeroth_step"] == "OUT.h0" and system.meta["converged_step"] == "OUT.scf"
    for tag in ("H0", "H"):
        assert window_error(system, tag) < 1e-4  # 0.1 meV


def test_fermi_level_of_zeroth_step_matches_first_iteration():
    system = read_run(need(DATA / "runs" / "s0089"))
    ef = system.fermi_from_bands(system.bands("H0", system.kpoints.frac), system.kpoints.weights)
    assert abs(ef - 5.7837873833) < 2e-3  # E_Fermi of ELEC=1 in OUT.scf/running_scf.log


def test_hamiltonian_is_hermitian_in_k_space():
    system = read_run(need(DATA / "runs" / "t0045"))
    k = np.random.default_rng(0).random((3, 3))
    for tag in ("H0", "H"):
        hk = KAssembler(system.matrices[tag], spinor=True)(k)
        assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-12)


def test_example_run_reads():
    system = read_run(need(EXAMPLE))
    assert window_error(system, "H") < 1e-4


def test_explicit_step_choice_and_ambiguity(tmp_path):
    src = need(DATA / "runs" / "s0221")
    run = tmp_path / "run"
    shutil.copytree(src, run)
    shutil.copytree(src / "OUT.h0", run / "OUT.h0b")
    shutil.copy(run / "INPUT.h0", run / "INPUT.h0b")
    with pytest.raises(RunDirectoryError, match="several zeroth steps"):
        read_run(run, orbital_dir=DATA / "pp_orb")
    s = read_run(run, zeroth="h0b", orbital_dir=DATA / "pp_orb")
    assert s.meta["zeroth_step"] == "OUT.h0b"


# ---------------------------------------------------------------------------- fixtures


def test_c_atom_nspin4_matches_dense_reference():
    d = need(FIXTURES / "abacus" / "C_atom_nspin4_207_NO_KP_OHS_SPIN4")
    system = read_run(d)
    assert system.spin_mode == "noncollinear" and not system.soc

    def dense(name):
        toks = (d / name).read_text().split(None, 1)
        n = int(toks[0])
        flat = np.array(toks[1].translate(str.maketrans("(),", "   ")).split(), float)
        v = flat[0::2] + 1j * flat[1::2]
        m = np.zeros((n, n), complex)
        iu = np.triu_indices(n)
        m[iu] = v
        return m + np.conj(np.triu(m, 1)).T

    from nextham_dft.core.kspace import solve_generalized
    from nextham_dft.core.units import RY_TO_EV

    href, sref = dense("data-1-H.ref") * RY_TO_EV, dense("data-1-S.ref")
    e_ref = solve_generalized(href[None], sref[None])[0]
    e = system.bands("H", np.zeros((1, 3)))[0]
    assert np.abs(e - e_ref).max() < 1e-6
    # element-wise, back in ABACUS's order
    from nextham_dft.adapters.abacus.writers import to_abacus_coo

    r, c, _uR, _ridx, v = to_abacus_coo(system.matrices["H"], system, spinor=True)
    h = np.zeros_like(href)
    h[r, c] = v
    assert np.abs(h - href).max() < 1e-6


@pytest.mark.parametrize(
    "case, gen, complex_values",
    [
        ("Si2_nspin1_207_NO_KP_OH2/data-HR-sparse_SPIN0.csr.ref", "old", False),
        ("Si2_nspin1_207_NO_KP_OH2/data-SR-sparse_SPIN0.csr.ref", "old", False),
        ("C_atom_nspin4_207_NO_KP_OHS_SPIN4/data-HR-sparse_SPIN0.csr.ref", "old", True),
        ("C_atom_nspin4_newfmt_scf_out_hsr_spin4/hrs1_nao.csr.ref", "2025", True),
        ("C_atom_nspin4_newfmt_scf_out_hsr_spin4/srs1_nao.csr.ref", "2025", True),
        ("Si2_nspin2_newfmt_scf_out_hsr_spin2/hrs1_nao.csr.ref", "2025", False),
        ("Si2_nspin2_newfmt_scf_out_hsr_spin2/hrs2_nao.csr.ref", "2025", False),
        ("H2O_box_newfmt_nscf_init_chg_hr/hrs1_nao.csr", "2025", False),
        ("H2O_box_newfmt_nscf_init_chg_hr/hrs1_nao.csr.ref", "2025", False),
        ("GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310/OUT.ABACUS/srs1_nao.csr", "old", True),
        ("Si2_nscf_SR_TR_rR_207_NO_KP_OH_nscf/data-SR-sparse_SPIN0.csr.ref", "old", False),
    ],
)
def test_every_fixture_matrix_parses(case, gen, complex_values):
    c = read_csr(need(FIXTURES / "abacus" / case))
    assert c.generation == gen and c.is_complex == complex_values
    assert len(c.values) > 0 and c.rows.max() < c.dim


def test_h2o_input_and_reference_hold_the_same_matrix():
    d = need(FIXTURES / "abacus" / "H2O_box_newfmt_nscf_init_chg_hr")
    a, b = read_csr(d / "hrs1_nao.csr"), read_csr(d / "hrs1_nao.csr.ref")
    assert len(a.R) == 9 and len(b.R) == 11  # the input drops the two empty blocks
    ka = {(tuple(a.R[i]), r, c): v for i, r, c, v in zip(a.Ridx, a.rows, a.cols, a.values)}
    kb = {(tuple(b.R[i]), r, c): v for i, r, c, v in zip(b.Ridx, b.rows, b.cols, b.values)}
    assert ka.keys() == kb.keys()


def test_nspin2_fixture_up_down_differ_and_are_hermitian():
    d = need(FIXTURES / "abacus" / "Si2_nspin2_newfmt_scf_out_hsr_spin2")
    from nextham_dft.core.blocks import BlockSparse

    for name in ("hrs1_nao.csr.ref", "hrs2_nao.csr.ref"):
        c = read_csr(d / name)
        m = BlockSparse.from_coo([4, 4], c.rows, c.cols, c.R[c.Ridx], c.values)
        assert m.hermiticity_error < 1e-6
    assert not np.allclose(read_csr(d / "hrs1_nao.csr.ref").values, read_csr(d / "hrs2_nao.csr.ref").values)


def test_gaas_soc_overlap_is_s_times_identity():
    d = need(FIXTURES / "abacus" / "GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310")
    steps = find_steps(d)
    assert [s.name for s in steps] == ["OUT.ABACUS"] and steps[0].kind == "nscf"
    system = read_run(d)
    s = system.matrices["S"]
    assert s.spin == "none" and system.spin_mode == "noncollinear" and system.soc
    assert system.dim == 62


@pytest.mark.parametrize("gen", ["old", "2025"])
def test_round_trip_between_generations(tmp_path, gen):
    """Read (old generation) → write (gen) → read back: identical canonical matrices."""
    for run in ("s0221", "t0045"):
        src = need(DATA / "runs" / run)
        system = read_run(src)
        out = tmp_path / f"{run}_{gen}"
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("OUT.*"))
        (out / "OUT.scf").mkdir()
        shutil.copy(src / "OUT.scf" / "kpoints", out / "OUT.scf" / "kpoints")
        write_hs(out / "OUT.scf", system, "H", gen)
        back = read_run(out, orbital_dir=DATA / "pp_orb")
        assert back.meta["csr_generation"] == gen
        for tag_a, tag_b in (("H", "H"), ("S", "S")):
            key = tag_b if tag_b in back.matrices else "H0"
            assert system.matrices[tag_a].max_abs_diff(back.matrices[key]) < 1e-6


@pytest.mark.parametrize("run", RUNS + ["example"])
def test_blocks_sit_on_their_bonds(run):
    """Every s–l overlap block points along Y_l of its bond vector τ_j + R − τ_i.

    This holds only with ABACUS's own (wrapped into the cell) positions: the example's STRU has an
    atom at fractional −0.009, and with STRU's position its blocks sit on the wrong bonds.
    """
    path = need(EXAMPLE) if run == "example" else need(DATA / "runs" / run)
    system = read_run(path)
    worst, count = orbital_convention_residual(system)
    assert count > 100 and worst < 1e-6
    if run == "example":
        from nextham_dft.adapters.abacus.inputs import read_stru

        stru = read_stru(path / "STRU")
        assert (stru.positions @ np.linalg.inv(stru.lattice)).min() < 0
        system.positions = stru.positions
        assert orbital_convention_residual(system)[0] > 0.5


def _rewritten_example(tmp_path, s_name, generation="2025", h_names=None):
    """The shipped example with both steps' matrices rewritten in ``generation``, S under ``s_name``."""
    src = need(EXAMPLE)
    system = read_run(src)
    out = tmp_path / "run"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("OUT.*"))
    for step, tag in (("OUT.h0", "H0"), ("OUT.scf", "H")):
        (out / step).mkdir()
        shutil.copy(src / step / "kpoints", out / step / "kpoints")
        write_hs(out / step, system, tag, generation, s_name, h_names)
    return system, out


def test_overlap_named_sr_nao_is_read_and_written_back(tmp_path):
    """ABACUS develop from 2026-07 names S(R) sr_nao.csr (no spin index): the run reads as before, and
    `predict` writes its abacus/ matrices under the names that were read."""
    from click.testing import CliRunner

    from nextham_dft.adapters.abacus.writers import S_NAME_2026
    from nextham_dft.cli import main

    system, run = _rewritten_example(tmp_path, S_NAME_2026)
    back = read_run(run)
    assert back.meta["s_file_name"] == "sr_nao.csr" and "sr_nao" in back.meta["generation"]
    for tag in ("H0", "H", "S"):
        assert system.matrices[tag].max_abs_diff(back.matrices[tag]) < 1e-6
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "pred" / "abacus").iterdir()) == ["hrs1_nao.csr", "sr_nao.csr"]
    assert read_csr(tmp_path / "pred" / "abacus" / "sr_nao.csr").generation == "2025"


def test_a_gamma_only_step_is_refused_in_one_line(tmp_path):
    """gamma_only 1 makes ABACUS fold H(R) and S(R) onto R = 0: not a real-space Hamiltonian."""
    from click.testing import CliRunner

    from nextham_dft.cli import main

    run = tmp_path / "run"
    shutil.copytree(need(EXAMPLE), run)
    text = (run / "INPUT.h0").read_text()
    (run / "INPUT.h0").write_text(text.replace("nspin            1", "nspin            1\ngamma_only       1"))
    with pytest.raises(RunDirectoryError, match="gamma_only"):
        read_run(run)
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "pred")])
    assert res.exit_code != 0 and "gamma_only" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "pred").exists()


def test_lts_names_under_the_old_header_are_written_back_as_read(tmp_path):
    """ABACUS 3.10.x LTS writes hrs1_nao.csr / srs1_nao.csr with the old header: `predict` writes its
    abacus/ matrices under those names and that header."""
    from click.testing import CliRunner

    from nextham_dft.cli import main

    system, run = _rewritten_example(tmp_path, "srs1_nao.csr", "old", ["hrs1_nao.csr"])
    back = read_run(run)
    assert "3.10" in back.meta["generation"] and back.meta["h_file_names"] == ["hrs1_nao.csr"]
    assert system.matrices["H0"].max_abs_diff(back.matrices["H0"]) < 1e-6
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.stderr
    written = tmp_path / "pred" / "abacus"
    assert sorted(p.name for p in written.iterdir()) == ["hrs1_nao.csr", "srs1_nao.csr"]
    assert read_csr(written / "hrs1_nao.csr").generation == "old"
