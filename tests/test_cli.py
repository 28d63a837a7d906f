"""The command line: info, bands, dataset build; bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextham_dft import __version__
from nextham_dft.cli import main

from .conftest import DATA, EXAMPLE, FIXTURES, need


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_error(res) -> None:
    assert res.exit_code != 0
    assert "Traceback" not in res.output + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nextham-dft: error:"), res.stderr


def test_version_and_help():
    assert __version__ in run("--version").output
    for cmd in ([], ["info"], ["bands"], ["dataset"], ["dataset", "build"]):
        res = run(*cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output


def test_info_json_on_example():
    res = run("info", str(need(EXAMPLE)), "--json")
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.output)
    assert d["formula"] == "Si2" and d["matrix_dimension"] == 26 and d["spin_mode"] == "none"
    assert d["found"]["summary"] == "both" and d["basis"]["Si"]["shells"] == "2s2p1d"
    assert d["nelec"] == 8.0 and d["matrices"]["H"]["R_vectors"] > 1
    assert d["pseudopotentials"]["Si"] == {"file": "Si.upf", "functional": "PBE", "z_valence": 4.0, "core_correction": True}
    assert d["scf_completion"] == "ready"


@pytest.mark.parametrize("case", ["Si2_nspin1_207_NO_KP_OH2", "C_atom_nspin4_207_NO_KP_OHS_SPIN4",
                                  "C_atom_nspin4_newfmt_scf_out_hsr_spin4", "GaAs_soc_nspin4_v3.10.1_SRonly_DeePTB_soc0310",
                                  "Si2_nscf_SR_TR_rR_207_NO_KP_OH_nscf"])
def test_info_on_fixtures(case, tmp_path):
    src = need(FIXTURES / "abacus" / case)
    d = src
    if case == "C_atom_nspin4_newfmt_scf_out_hsr_spin4":  # no STRU/INPUT upstream: same run as #2
        d = tmp_path / case
        shutil.copytree(src, d)
        for f in ("STRU", "KPT", "INPUT"):
            shutil.copy(FIXTURES / "abacus" / "C_atom_nspin4_207_NO_KP_OHS_SPIN4" / f, d / f)
    res = run("info", str(d), "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.output)
    assert info["code"] == "abacus" and info["matrix_dimension"] > 0


def test_bands_run_kpoints_match_istate(tmp_path):
    out = tmp_path / "b"
    res = run("bands", str(need(EXAMPLE)), "--source", "scf", "--kpoints", "run", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    z = np.load(out / "bands.npz")
    from nextham_dft.adapters.abacus.outputs import read_istate

    ref = read_istate(EXAMPLE / "OUT.scf" / "istate.info.xz")
    assert z["kpoints_frac"].shape == (ref.shape[0], 3)
    assert np.all(np.diff(z["energies_ev"], axis=1) >= 0)
    assert np.abs(z["energies_ev"][:, : ref.shape[1]] - ref).max() < 1e-4
    assert abs(float(z["fermi_ev"]) - 9.8228714574) < 5e-3


def test_bands_path_plot_and_compare(tmp_path):
    out = tmp_path / "p"
    res = run("bands", str(need(EXAMPLE)), "--source", "scf", "--compare", "h0", "--out", str(out), "--density", "15")
    assert res.exit_code == 0, res.stderr
    assert (out / "bands.png").stat().st_size > 10000
    z = np.load(out / "bands.npz")
    assert z["energies_ev"].shape[0] == z["kpoints_frac"].shape[0] and "Γ" in list(z["tick_label"])
    # an existing output is not overwritten without --force; foreign folders never
    assert_clean_error(run("bands", str(EXAMPLE), "--out", str(out)))
    assert run("bands", str(EXAMPLE), "--out", str(out), "--force", "--density", "10").exit_code == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    assert_clean_error(run("bands", str(EXAMPLE), "--out", str(foreign), "--force"))
    assert (foreign / "keep.txt").read_text() == "user data"


def test_bands_near_an_energy_equal_the_dense_ones(tmp_path):
    """--near E --nbands N: the N eigenvalues nearest E (sparse shift-invert) are the dense ones."""
    dense = tmp_path / "dense"
    assert run("bands", str(need(EXAMPLE)), "--source", "scf", "--kpoints", "run", "--out", str(dense)).exit_code == 0
    zd = np.load(dense / "bands.npz")
    ef = float(zd["fermi_ev"])
    near = tmp_path / "near"
    res = run("bands", str(EXAMPLE), "--source", "scf", "--kpoints", "run", "--out", str(near), "--near", str(ef),
              "--nbands", "6")
    assert res.exit_code == 0, res.stderr
    zn = np.load(near / "bands.npz")
    assert np.isnan(zn["fermi_ev"]) and float(zn["reference_ev"]) == ef
    for ek, nk in zip(zd["energies_ev"], zn["energies_ev"]):
        assert np.allclose(nk, np.sort(ek[np.argsort(np.abs(ek - ef))[:6]]), atol=1e-8)
    path = tmp_path / "path"  # and along a path, with the plot
    res = run("bands", str(EXAMPLE), "--source", "scf", "--compare", "h0", "--out", str(path), "--density", "10",
              "--near", str(ef), "--nbands", "6")
    assert res.exit_code == 0, res.stderr
    assert (path / "bands.png").stat().st_size > 10000


def test_bands_near_an_energy_spin_polarised(tmp_path):
    """A collinear run (SIESTA, bcc Fe): --near gives both spin channels, each the dense ones nearest E."""
    run_dir = need(FIXTURES / "siesta" / "fe_bcc_simple")
    dense, near = tmp_path / "dense", tmp_path / "near"
    assert run("bands", str(run_dir), "--source", "scf", "--kpoints", "run", "--out", str(dense)).exit_code == 0
    res = run("bands", str(run_dir), "--source", "scf", "--kpoints", "run", "--out", str(near), "--near", "-6",
              "--nbands", "4")
    assert res.exit_code == 0, res.stderr
    ed, en = np.load(dense / "bands.npz")["energies_ev"], np.load(near / "bands.npz")["energies_ev"]
    assert ed.shape[0] == en.shape[0] == 2 and en.shape[2] == 4
    for sd, sn in zip(ed, en):
        for ek, nk in zip(sd[::40], sn[::40]):
            assert np.allclose(nk, np.sort(ek[np.argsort(np.abs(ek + 6))[:4]]), atol=1e-8)


def test_bands_too_big_for_dense_memory_is_one_line(tmp_path, monkeypatch):
    import os

    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real(name))
    res = run("bands", str(need(EXAMPLE)), "--source", "scf", "--out", str(tmp_path / "b"))
    assert_clean_error(res)
    assert "--near" in res.stderr
    assert not (tmp_path / "b").exists()


def test_dataset_build_from_runs_and_dojo_file(tmp_path):
    out = tmp_path / "train.h5"
    res = run("dataset", "build", str(need(EXAMPLE)), str(need(DATA / "runs" / "t0045")), "-o", str(out))
    assert res.exit_code == 0, res.stderr
    from nextham_dft.dataset import iter_dataset, list_ids

    assert list_ids(out) == ["abacus-si2", "t0045"]
    systems = list(iter_dataset(out))
    assert systems[1].spin_mode == "noncollinear"
    assert_clean_error(run("dataset", "build", str(EXAMPLE), "-o", str(out)))  # exists


def test_dataset_build_from_dojo_h5_keeps_eigenvalues(tmp_path):
    out = tmp_path / "d.h5"
    src = need(DATA / "dataset.h5")
    res = run("dataset", "build", str(src), "--select", "s0029", "--select", "t0043", "-o", str(out))
    assert res.exit_code == 0, res.stderr
    from nextham_dft.dataset import iter_dataset
    from nextham_dft.testing import eigenvalue_error

    systems = list(iter_dataset(out))
    assert [s.meta["id"] for s in systems] == ["s0029", "t0043"]
    for s in systems:
        assert eigenvalue_error(s, "H")[0] < 1e-4 and eigenvalue_error(s, "H0")[0] < 1e-4
    assert_clean_error(run("dataset", "build", str(src), "--select", "nope", "-o", str(tmp_path / "x.h5")))
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["info", "/nonexistent/run"],
        ["bands", "/nonexistent/run", "--out", "/tmp/nextham-never"],
        ["dataset", "build", "/nonexistent", "-o", "/tmp/nextham-never.h5"],
    ],
)
def test_missing_paths_are_one_line_errors(args):
    assert_clean_error(run(*args))


def test_empty_and_foreign_directories(tmp_path):
    assert_clean_error(run("info", str(tmp_path)))
    (tmp_path / "notes.txt").write_text("hello")
    assert_clean_error(run("info", str(tmp_path)))
    (tmp_path / "STRU").write_text("garbage\n")
    assert_clean_error(run("info", str(tmp_path)))


def _plain_copy(src: Path, dst: Path) -> None:
    """Copy a run, decompressing .xz so that files can be mutated as text."""
    shutil.copytree(src, dst)
    for p in list(dst.rglob("*.xz")):
        p.with_suffix("").write_bytes(lzma.decompress(p.read_bytes()))
        p.unlink()


def test_missing_orbital_file_and_unknown_element(tmp_path):
    run_dir = tmp_path / "r"
    _plain_copy(need(EXAMPLE), run_dir)
    (run_dir / "Si_gga_6au_100Ry_2s2p1d.orb").unlink()
    res = run("info", str(run_dir))
    assert_clean_error(res)
    assert "orbital file" in res.stderr
    run2 = tmp_path / "r2"
    _plain_copy(EXAMPLE, run2)
    stru = (run2 / "STRU").read_text().replace("\nSi\n0.0\n2", "\nXx\n0.0\n2")
    (run2 / "STRU").write_text(stru)
    assert_clean_error(run("info", str(run2)))


def test_wrong_dimension_is_reported(tmp_path):
    run_dir = tmp_path / "r"
    _plain_copy(need(EXAMPLE), run_dir)
    orb = run_dir / "Si_gga_6au_100Ry_2s2p1d.orb"
    orb.write_text(orb.read_text().replace("Number of Dorbital-->       1", "Number of Dorbital-->       0"))
    res = run("info", str(run_dir))
    assert_clean_error(res)


MUTABLE = ["OUT.scf/data-HR-sparse_SPIN0.csr", "OUT.h0/data-SR-sparse_SPIN0.csr", "STRU", "KPT",
           "OUT.scf/kpoints", "OUT.scf/istate.info", "INPUT.scf", "Si_gga_6au_100Ry_2s2p1d.orb"]


@pytest.fixture(scope="module")
def plain_example(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain") / "run"
    _plain_copy(need(EXAMPLE), d)
    return d


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(MUTABLE),
    op=st.sampled_from(["truncate", "garble", "drop_line"]),
    where=st.floats(0.02, 0.97),
)
def test_mutated_real_files_never_give_a_traceback(plain_example, tmp_path_factory, which, op, where):
    d = tmp_path_factory.mktemp("mut") / "run"
    shutil.copytree(plain_example, d)
    p = d / which
    text = p.read_text()
    cut = int(len(text) * where)
    if op == "truncate":
        text = text[:cut]
    elif op == "garble":
        k = text.rfind(" ", 0, cut) + 1
        text = text[:k] + "x#!" + text[k + 3 :]
    else:
        lines = text.splitlines(True)
        del lines[min(int(len(lines) * where), len(lines) - 1)]
        text = "".join(lines)
    p.write_text(text)
    res = run("info", str(d))
    assert "Traceback" not in res.output + res.stderr
    if res.exit_code != 0:
        assert_clean_error(res)
    if op == "truncate" and which.endswith(".csr") and where < 0.95:
        assert res.exit_code != 0  # a truncated matrix is always detected


def test_orbital_dir_option_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    """--orbital-dir as a user types it: relative to where the command runs, not to the run folder."""
    run_dir = tmp_path / "runs" / "si2"
    shutil.copytree(need(EXAMPLE), run_dir)
    orbs = tmp_path / "orbitals"
    orbs.mkdir()
    shutil.move(str(run_dir / "Si_gga_6au_100Ry_2s2p1d.orb"), orbs)
    monkeypatch.chdir(tmp_path)
    assert_clean_error(run("info", "runs/si2"))  # the orbital file is gone from the run
    res = run("info", "runs/si2", "--orbital-dir", "orbitals")
    assert res.exit_code == 0, res.output
    assert "2s2p1d" in res.output


@pytest.mark.parametrize("module", ["nextham_dft", "nextham_dft.cli"])
def test_python_dash_m_has_every_command(module):
    """`python -m nextham_dft` (and `-m nextham_dft.cli`) offer the same commands as the script, model ones included."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("info", "dataset", "predict", "train", "eval", "bands", "restart", "setup", "export"):
        assert f"  {cmd} " in res.stdout, (cmd, res.stdout)


def test_matrices_without_their_run_say_what_is_missing(tmp_path):
    """A folder holding ABACUS matrix files but no STRU or OUT.* folder (matrices copied out of their
    run) is refused in one line that names the files found and what to add; a folder with nothing of
    any code's gets the plain message; nothing is written."""
    res = run("predict", str(need(FIXTURES / "abacus" / "C_atom_nspin4_newfmt_scf_out_hsr_spin4")),
              "--out", str(tmp_path / "out"))
    assert_clean_error(res)
    assert "hrs1_nao.csr.ref" in res.stderr and "STRU" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("predict", str(empty), "--out", str(tmp_path / "out"))
    assert_clean_error(res)
    assert "not a run directory" in res.stderr and "ABACUS matrices" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_bands_of_the_completed_prediction_lie_on_the_dft_bands(tmp_path):
    """--source completed: the prediction finished to self-consistency (predict --scf), on the run's
    k-points, against ABACUS's converged H."""
    out = tmp_path / "b"
    res = run("bands", str(need(EXAMPLE)), "--source", "completed", "--kpoints", "run", "--out", str(out),
              "--model", "fast")
    assert res.exit_code == 0, res.stderr
    assert "scf iteration" in res.stderr
    ref = tmp_path / "r"
    assert run("bands", str(EXAMPLE), "--source", "scf", "--kpoints", "run", "--out", str(ref)).exit_code == 0
    e, e_ref = (np.load(p / "bands.npz")["energies_ev"] for p in (out, ref))
    d = e - e_ref
    low = e_ref < np.load(ref / "bands.npz")["fermi_ev"] + 2.0  # occupied and the lowest empty bands
    assert np.abs(d[low] - d[low].mean()).mean() < 3e-3  # eV, the rigid shift removed
