"""SIESTA runs through sisl: every fixture parses and its eigenvalues equal SIESTA's own .EIG."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from nextham_dft.adapters.siesta import SiestaAdapter, read_run
from nextham_dft.errors import NexthamError
from nextham_dft.testing import eigenvalue_error, orbital_convention_residual

from .conftest import FIXTURES, need
from .test_cli import assert_clean_error, run

pytestmark = pytest.mark.filterwarnings("ignore")
SI = FIXTURES / "siesta"
# fixture: (spin mode, soc, worst |ours − .EIG| within 10 eV of E_F in eV). SIESTA 5 prints 9 decimals in
# .EIG; the SIESTA 4 HSX (legacy) stores H in single precision, hence 0.2 meV there.
CASES = {
    "Si_pdos_k": ("none", False, 1e-4),
    "legacy_si_pdos_kgrid_siesta4": ("none", False, 2e-4),
    "SrTiO3_unpolarized": ("none", False, 1e-4),
    "SrTiO3_non-collinear": ("noncollinear", False, 1e-4),
    "fe_bcc_simple": ("collinear", False, 2e-4),
    "Pt2_soc": ("noncollinear", True, 1e-4),
    "Bi_hexagonal": ("noncollinear", True, 1e-4),
    "H2O_dipole": ("none", False, 1e-4),
    "H_chain": ("none", False, 1e-4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_eigenvalues_match_siesta(case):
    spin, soc, tol = CASES[case]
    s = read_run(need(SI / case))
    assert s.meta["code"] == "siesta"
    assert s.spin_mode == spin and s.soc == soc
    near, _ = eigenvalue_error(s, "H")
    assert near < tol


@pytest.mark.parametrize("case", ["Si_pdos_k", "SrTiO3_unpolarized", "fe_bcc_simple", "Bi_hexagonal",
                                  "legacy_si_pdos_kgrid_siesta4"])
def test_orbital_convention_table_is_proven_by_the_overlap(case):
    worst, count = orbital_convention_residual(read_run(need(SI / case)))
    assert count > 20 and worst < 1e-6


def test_gamma_only_box_folds_images_and_is_flagged():
    """A Γ-only SIESTA run sums periodic images into R = 0 (3 Å box here): geometry-blind, and flagged."""
    s = read_run(need(SI / "H2O_dipole"))
    assert s.meta["gamma_folded"]
    assert orbital_convention_residual(s)[0] > 0.1
    assert not read_run(need(SI / "Si_pdos_k")).meta["gamma_folded"]


def test_shells_are_sorted_by_l_with_semicore_first():
    s = read_run(need(SI / "SrTiO3_unpolarized"))
    labels = {b.element: b.label() for b in s.bases}
    assert labels["Sr"] == "3s2p1d" and labels["O"] == "2s2p1d"
    sr = next(b for b in s.bases if b.element == "Sr")
    assert [(sh.l, sh.zeta) for sh in sr.shells] == sorted((sh.l, sh.zeta) for sh in sr.shells)


def test_spinor_hamiltonian_is_hermitian_and_soc_breaks_spin_symmetry():
    s = read_run(need(SI / "Bi_hexagonal"))
    h = s.matrices["H"]
    assert h.spin == "spinor"
    from nextham_dft.core.kspace import KAssembler

    hk = KAssembler(h, spinor=True)(np.array([[0.1, 0.2, 0.0]]))
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-10)
    off = np.abs(h.data[:, 0, 1]).max()
    assert off > 1e-3  # spin–orbit couples up and down


def test_cli_info_bands_dataset_and_predict_refusal(tmp_path):
    d = need(SI / "Si_pdos_k")
    assert SiestaAdapter().detect(d)
    res = run("info", str(d))
    assert res.exit_code == 0, res.stderr
    assert "siesta" in res.output and "Si2" in res.output
    res = run("bands", str(d), "--source", "scf", "--out", str(tmp_path / "b"), "--density", "10")
    assert res.exit_code == 0, res.stderr
    res = run("dataset", "build", str(d), "-o", str(tmp_path / "d.h5"), "--allow-partial")
    assert res.exit_code == 0, res.stderr
    res = run("predict", str(d), "--out", str(tmp_path / "p"))
    assert_clean_error(res)
    assert "zeroth" in res.stderr or "basis" in res.stderr


def test_zeroth_and_converged_steps_in_sub_folders(tmp_path):
    src = need(SI / "Si_pdos_k")
    run_dir = tmp_path / "run"
    for sub, n in (("h0", 1), ("scf", 50)):
        shutil.copytree(src, run_dir / sub)
        fdf = run_dir / sub / "Si_pdos.fdf"
        fdf.write_text(fdf.read_text().replace("MaxSCFIterations 50", f"MaxSCFIterations {n}"))
    s = read_run(run_dir)
    assert s.meta["zeroth_step"] == "h0" and s.meta["converged_step"] == "scf"
    assert set(s.matrices) == {"H0", "H", "S"}
    res = run("info", str(run_dir))
    assert res.exit_code == 0 and "both" in res.output


def test_bad_files_are_clear_errors(tmp_path):
    src = need(SI / "Si_pdos_k")
    d = tmp_path / "cut"
    shutil.copytree(src, d)
    data = (d / "Si_pdos.HSX").read_bytes()
    (d / "Si_pdos.HSX").write_bytes(data[: len(data) // 2])
    (d / "Si_pdos.TSHS").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NexthamError):
            read_run(d)
        assert_clean_error(run("info", str(d)))


def test_train_a_few_steps_on_converted_siesta_data(tmp_path):
    """Users with SIESTA runs can train their own model: dataset build + train on a SIESTA basis.

    The fixtures hold no zeroth step, so the training pair is made from the converged run with a
    rigid shift H(0) = H − 0.1 eV·S (a ΔH the model can learn): this tests the machinery only.
    """
    import h5py
    import yaml

    from nextham_dft.dataset import write_system
    from nextham_dft.model.config import load_train_config
    from nextham_dft.model.train import train

    s = read_run(need(SI / "Si_pdos_k"))
    h, S = s.matrices["H"], s.matrices["S"]
    s.matrices["H0"] = h.with_data(h.data - 0.1 * S.aligned_to(h).data)
    data = tmp_path / "siesta.h5"
    with h5py.File(data, "w") as f:
        for k in range(4):
            write_system(f.create_group(f"si{k}"), s)
    cfg = {"data": str(data), "out_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 2, "val_fraction": 0.25,
           "test_fraction": 0.25, "budget_minutes": 5, "threads": 1,
           "model": {"layout": [[0, 1], [1, 1], [2, 1]], "hidden_irreps": "4x0e+2x1o+2x2e", "num_layers": 1,
                     "mlp_hidden": 16, "spin_head": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    best = train(load_train_config(tmp_path / "c.yaml"), device="cpu")
    assert best.is_file()
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) >= 3


@pytest.mark.parametrize("case", ["SrTiO3_unpolarized", "SrTiO3_non-collinear", "fe_bcc_simple"])
def test_band_lines_eigenvalues_match_siesta_bands_file(case):
    """SIESTA's .bands (4 decimals) along its BandLines path: ours agree to the printed precision."""
    from nextham_dft.adapters.siesta.run import band_path_eigenvalues

    d = need(SI / case)
    k, e = band_path_eigenvalues(d)
    s = read_run(d)
    ours = s.bands("H", k)
    win = np.abs(e - s.fermi_ev["H"]) < 10
    assert np.abs(ours - e)[win].max() < 1e-4


@pytest.mark.parametrize("case,label", [("Pt2_soc", "Pt2_xx"), ("Si_pdos_k", "Si_pdos")])
def test_tshs_alone_reads_with_the_basis_from_ion_files(tmp_path, case, label):
    """TSHS stores no orbital quantum numbers: the basis comes from the .ion.xml files; E_F shift undone."""
    d = tmp_path / "run"
    shutil.copytree(need(SI / case), d)
    (d / f"{label}.HSX").unlink()
    s = read_run(d)
    assert "TSHS" in s.meta["generation"]
    assert eigenvalue_error(s, "H")[0] < 1e-4


def test_tshs_without_any_basis_source_is_a_clear_error(tmp_path):
    d = tmp_path / "run"
    shutil.copytree(need(SI / "legacy_si_pdos_kgrid_siesta4"), d)
    for f in d.glob("*.HSX"):
        f.unlink()
    assert_clean_error(run("info", str(d)))
