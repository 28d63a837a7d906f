"""`nextham-dft predict` and `eval` with the bundled model, and its model card."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from nextham_dft.adapters.abacus import read_run
from nextham_dft.cli import main
from nextham_dft.dataset import read_system
from nextham_dft.model.store import ModelFileError, bundled_model_path, load_model

from .conftest import DATA, EXAMPLE, need
from .test_cli import assert_clean_error


def run(*args):
    return CliRunner().invoke(main, list(args))


def farthest_state(system, window, h) -> float:
    """eV: the largest distance from a state of ``h`` in the band window itself (not widened, unlike
    the eval metric ``farthest_state_mev``; rigid shift removed) to the nearest DFT state at the same
    k; a ghost state makes it large."""
    from nextham_dft.core.kspace import band_energies
    from nextham_dft.evaluation import nearest_distance

    s, k = system.matrices["S"], system.kpoints.frac
    e_ref = band_energies(system.matrices["H"], s, k)
    lo, hi = window
    inside = (e_ref >= lo) & (e_ref <= hi)
    e = band_energies(h, s, k)
    e = e - (e - e_ref)[inside].mean()
    return float(nearest_distance(e, e_ref)[(e >= lo) & (e <= hi)].max())


@pytest.mark.parametrize("name", ["bundled", "fast", "local"])
def test_bundled_model_card_and_checksum(tmp_path, name):
    model, card = load_model(bundled_model_path(name))
    assert sum(bundled_model_path(n).stat().st_size for n in ("bundled", "fast", "local", "density")) < 30e6  # all ship
    for key in ("elements", "orbital_files", "basis_labels", "spin_modes", "training", "split", "sha256"):
        assert key in card
    assert "Si" in card["elements"] and card["training"]["total_wall_clock_s"] <= 2 * 3600  # trains in ≤ 2 h
    bad = tmp_path / "model.pt"
    data = bytearray(bundled_model_path(name).read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    shutil.copy(bundled_model_path(name).with_suffix(".json"), tmp_path / "model.json")
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(bad)


def test_predict_example_writes_outputs_and_beats_nothing_silently(tmp_path):
    out = tmp_path / "pred"
    res = run("predict", str(need(EXAMPLE)), "--out", str(out), "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu" and set(report["timings"]) >= {"read_s", "predict_s", "write_s"}
    ev = report["eval"]
    assert ev["predicted"]["band_mae_shifted_mev"] < ev["h0"]["band_mae_shifted_mev"]
    # no ghost: every predicted state in the widened window lies next to a DFT band at its k (the
    # ghost_states metric also counts a real band that the prediction moves across the window's edge)
    assert ev["predicted"]["farthest_state_mev"] < 250.0
    with h5py.File(out / "hamiltonian.h5") as f:
        system = read_system(f[next(iter(f))])
    assert set(system.matrices) == {"H0", "H", "S"}
    # hermitian by construction, and the ABACUS files read back as the same matrix
    from nextham_dft.adapters.abacus.csr import read_csr

    c = read_csr(out / "abacus" / "data-HR-sparse_SPIN0.csr")
    assert c.dim == 26
    orig = read_run(EXAMPLE)
    assert system.matrices["H0"].max_abs_diff(orig.matrices["H0"]) == 0.0
    # an existing output folder is kept unless --force
    assert_clean_error(run("predict", str(EXAMPLE), "--out", str(out)))
    assert "write_native_s" in report["timings"]
    # --no-native: hamiltonian.h5 and report.json only, the same prediction
    lean = tmp_path / "lean"
    res = run("predict", str(EXAMPLE), "--out", str(lean), "--device", "cpu", "--no-native")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in lean.iterdir() if not p.name.startswith(".")) == ["hamiltonian.h5", "report.json"]
    assert "write_native_s" not in json.loads((lean / "report.json").read_text())["timings"]
    with h5py.File(lean / "hamiltonian.h5") as f:
        again = read_system(f[next(iter(f))])
    assert again.matrices["H"].max_abs_diff(system.matrices["H"]) == 0.0
    # the bundled correction model is an ensemble: its members' spread is reported; 'fast' is one network
    ens = tmp_path / "ensemble"
    res = run("predict", str(EXAMPLE), "--out", str(ens), "--device", "cpu", "--no-native", "--model", "bundled")
    assert res.exit_code == 0, res.stderr
    report = json.loads((ens / "report.json").read_text())
    assert report["ensemble"]["members"] == 2 and 0 < report["ensemble"]["spread_mean_mev"] < 100
    fast = tmp_path / "fast"
    res = run("predict", str(EXAMPLE), "--out", str(fast), "--device", "cpu", "--no-native", "--model", "fast")
    assert res.exit_code == 0, res.stderr
    rep = json.loads((fast / "report.json").read_text())
    assert "ensemble" not in rep and rep["model"] != report["model"]
    assert rep["eval"]["predicted"]["band_mae_shifted_mev"] < rep["eval"]["h0"]["band_mae_shifted_mev"]
    # 'local': the local-potential network (its integrals need the orbital files' radial tables)
    local = tmp_path / "local"
    res = run("predict", str(EXAMPLE), "--out", str(local), "--device", "cpu", "--no-native", "--model", "local")
    assert res.exit_code == 0, res.stderr
    rep = json.loads((local / "report.json").read_text())
    assert rep["eval"]["predicted"]["h_mae_shifted_mev"] < 0.5 * rep["eval"]["h0"]["h_mae_shifted_mev"]
    assert rep["eval"]["predicted"]["band_mae_shifted_mev"] < rep["eval"]["h0"]["band_mae_shifted_mev"]


def test_predicted_bands_plot(tmp_path):
    res = run("bands", str(need(EXAMPLE)), "--source", "predicted", "--compare", "scf", "--out", str(tmp_path / "b"),
              "--density", "10")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "b" / "bands.png").is_file()


def test_predict_soc_run_keeps_h0_spin_orbit_part():
    from nextham_dft.evaluation import evaluate
    from nextham_dft.model.predict import predict_hamiltonian

    system = read_run(need(DATA / "runs" / "t0045"))
    model, _ = load_model(bundled_model_path())
    h = predict_hamiltonian(model, system)
    ev = evaluate(system, h)
    assert ev["predicted"]["soc_mae_uev"] < 1.0  # μeV
    assert ev["predicted"]["band_mae_shifted_mev"] < ev["h0"]["band_mae_shifted_mev"]
    # no spurious (ghost) states: every predicted state in the band window lies near a DFT band at its k
    # (BN's 4.7 eV gap would show one). The ghost_states metric also counts real bands that cross the
    # window's edges, which BN's large H(0) error makes common, so it is not the assertion here.
    window = ev["predicted"]["window_ev"]
    worst = {name: farthest_state(system, window, m) for name, m in (("predicted", h), ("h0", system.matrices["H0"]))}
    assert worst["predicted"] < 1.0 and worst["predicted"] <= worst["h0"]


def test_bundled_model_is_equivariant_on_a_soc_run():
    """The shipped weights (not only a random model): a rotation with inversion of BN (SOC) rotates the
    predicted blocks with the Wigner-D matrices of the basis and the spin-1/2 rotation."""
    import torch

    from nextham_dft.model.predict import predict_correction
    from nextham_dft.testing import assert_hamiltonian_equivariant

    system = read_run(need(DATA / "runs" / "t0045"))
    model, _ = load_model(bundled_model_path())
    predict = lambda s: predict_correction(model, s, dtype=torch.float64)  # noqa: E731
    assert_hamiltonian_equivariant(predict, system, n_rotations=1, rtol=1e-5)
    assert np.abs(predict(system).data).max() > 1e-3  # a correction of meV size, so the test can fail


def test_predict_refuses_foreign_basis_and_magnetic_runs(tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(need(EXAMPLE), run_dir)
    orb = run_dir / "Si_gga_6au_100Ry_2s2p1d.orb"
    text = orb.read_text().replace("Number of Sorbital-->       2", "Number of Sorbital-->       5")
    orb.write_text(text)
    res = run("predict", str(run_dir), "--out", str(tmp_path / "o1"))
    assert_clean_error(res)
    soc = tmp_path / "soc"
    shutil.copytree(need(DATA / "runs" / "t0045"), soc)
    stru = (soc / "STRU").read_text()
    assert "\n2e-05\n" in stru
    (soc / "STRU").write_text(stru.replace("\n2e-05\n", "\n1.5\n", 1))  # a real starting moment
    res = run("predict", str(soc), "--out", str(tmp_path / "o2"), "--orbital-dir", str(DATA / "pp_orb"))
    assert_clean_error(res)
    assert "magnetic" in res.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_predict_an_element_the_model_never_saw_warns_and_reports_it(tmp_path):
    """Same basis family, element not in the card: predicts (exit 0) with a warning on stderr and in
    report.json, through the unknown-element embedding (so not the bundled model's Si prediction)."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    shutil.copy(bundled_model_path(), model_dir / "model.pt")
    card = json.loads(bundled_model_path().with_suffix(".json").read_text())
    card["elements"] = [e for e in card["elements"] if e != "Si"]
    card["orbital_files"].pop("Si", None)
    (model_dir / "model.json").write_text(json.dumps(card))
    res = run("predict", str(need(EXAMPLE)), "--out", str(tmp_path / "unseen"), "--model", str(model_dir / "model.pt"))
    assert res.exit_code == 0, res.stderr
    assert "element Si was not in the training data" in res.stderr
    report = json.loads((tmp_path / "unseen" / "report.json").read_text())
    assert any("Si" in w for w in report["warnings"])
    seen = run("predict", str(EXAMPLE), "--out", str(tmp_path / "seen"))
    assert seen.exit_code == 0 and "warning" not in seen.stderr
    assert json.loads((tmp_path / "seen" / "report.json").read_text())["warnings"] == []
    with h5py.File(tmp_path / "unseen" / "hamiltonian.h5") as f:
        h_unseen = read_system(f[next(iter(f))]).matrices["H"]
    with h5py.File(tmp_path / "seen" / "hamiltonian.h5") as f:
        h_seen = read_system(f[next(iter(f))]).matrices["H"]
    assert h_unseen.max_abs_diff(h_seen) > 1e-6


def test_eval_command_on_a_run_directory(tmp_path):
    res = run("eval", "bundled", str(need(EXAMPLE)), "--json", str(tmp_path / "e.json"))
    assert res.exit_code == 0, res.stderr
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["summary"]["h0"]["h_mae_mev"] > 0 and np.isfinite(d["summary"]["predicted"]["band_mae_mev"])


@pytest.mark.parametrize("prim, sup", [("si_prim_ns1", "si_222_ns1"), ("alp_prim_soc", "alp_211_soc")])
def test_bundled_model_predicts_a_supercell_as_its_primitive_cell(prim, sup):
    """Bigger cells: ΔH predicted on ABACUS's own supercell run (16-atom Si, 4-atom AlP with SOC)
    equals the primitive cell's prediction unfolded onto the supercell (the model is local, with no
    per-structure pooling), entry by entry including the SOC part."""
    import torch

    from nextham_dft.core.supercell import make_supercell
    from nextham_dft.model.predict import predict_correction

    from .test_dataset_and_supercell import supercell_of

    base = need(DATA / "supercell")
    p, s = read_run(base / prim), read_run(base / sup)
    P, order = supercell_of(p, s)
    model, _ = load_model(bundled_model_path())
    delta_p = predict_correction(model, p, dtype=torch.float64)
    p.matrices = {**p.matrices, "dH": delta_p}
    unfolded = make_supercell(p, P).matrices["dH"].permute_atoms(order)
    delta_s = predict_correction(model, s, dtype=torch.float64)
    assert np.abs(delta_s.data).max() > 1e-2  # a real correction, so the comparison can fail
    assert unfolded.max_abs_diff(delta_s) < 1e-8  # eV


def test_predict_skips_the_comparison_that_cannot_fit_in_memory(tmp_path, monkeypatch):
    """A converged SCF too big to diagonalise densely in the free memory: predicted anyway, warned, not compared."""
    import os

    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real(name))
    out = tmp_path / "pred"
    res = run("predict", str(need(EXAMPLE)), "--out", str(out), "--device", "cpu", "--no-native")
    assert res.exit_code == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert "eval" not in report and any("not compared" in w for w in report["warnings"])


def test_eval_of_a_split_absent_from_the_data_is_one_line(tmp_path, tiny_dataset):
    """`eval --split val` on a file that holds none of the model's validation structures is a clear
    error (it once evaluated every structure of the file under the split's name)."""
    res = run("eval", "bundled", str(tiny_dataset), "--split", "val", "--json", str(tmp_path / "e.json"))
    assert res.exit_code != 0 and "none of the" in res.stderr and "'val' split" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "e.json").exists()


def test_predict_scf_completes_the_prediction_to_the_dft_hamiltonian(tmp_path):
    """--scf: the prediction's density starts our own SCF (H(0) + ΔV_Hxc[ρ]); the result is within the
    grid's quadrature of ABACUS's converged H, well below the network alone, with no ghost state."""
    out = tmp_path / "scf"
    res = run("predict", str(need(EXAMPLE)), "--out", str(out), "--device", "cpu", "--no-native", "--model", "fast",
              "--scf")
    assert res.exit_code == 0, res.stderr
    assert "scf iteration 1" in res.stderr
    report = json.loads((out / "report.json").read_text())
    sc, ev = report["scf"], report["eval"]
    assert sc["converged"] and sc["iterations"] <= 10 and sc["residuals"][-1] < sc["tol"]
    assert "scf_s" in report["timings"]
    assert ev["predicted"]["band_mae_shifted_mev"] < 3.0 and ev["predicted"]["band_mae_mev"] < 5.0
    assert ev["predicted"]["h_mae_shifted_mev"] < 0.1 * ev["h0"]["h_mae_shifted_mev"]
    assert ev["predicted"]["ghost_states"] == 0


def test_predict_scf_without_the_pseudopotential_is_a_clean_error(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(need(EXAMPLE), run_dir)
    (run_dir / "Si.upf").unlink()
    out = tmp_path / "out"
    res = run("predict", str(run_dir), "--out", str(out), "--model", "fast", "--scf", "--scf-max-iter", "3")
    assert_clean_error(res)
    assert "Si.upf" in res.stderr and not out.exists()
    # a truncated one: the same one line, naming the file and what is missing
    text = (EXAMPLE / "Si.upf").read_text()
    (run_dir / "Si.upf").write_text(text[: text.index("<PP_RHOATOM") + 300])
    res = run("predict", str(run_dir), "--out", str(out), "--model", "fast", "--scf")
    assert_clean_error(res)
    assert "Si.upf" in res.stderr and "PP_RHOATOM" in res.stderr and not out.exists()


def test_predict_scf_from_the_atoms_needs_no_model_and_takes_any_basis(tmp_path):
    """--scf-from atoms: no network, so orbital files the model never saw are fine; the result is
    the converged H all the same."""
    run_dir = tmp_path / "run"
    shutil.copytree(need(EXAMPLE), run_dir)
    orb = run_dir / "Si_gga_6au_100Ry_2s2p1d.orb"
    orb.write_text(orb.read_text() + "\n")  # other bytes: not the file the model was trained with
    res = run("predict", str(run_dir), "--out", str(tmp_path / "net"), "--model", "fast", "--no-native")
    assert_clean_error(res)  # the network refuses the basis
    out = tmp_path / "atoms"
    res = run("predict", str(run_dir), "--out", str(out), "--no-native", "--scf-from", "atoms")
    assert res.exit_code == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"] is None and "predict_s" not in report["timings"]
    assert report["scf"]["converged"] and report["scf"]["start"] == "atoms"
    assert report["eval"]["predicted"]["band_mae_shifted_mev"] < 3.0


def test_the_default_model_is_the_density_model_where_the_run_suits_it(tmp_path):
    """Without --model, a run with its UPF files gets the bundled density model (the more accurate one) and one Pulay
    step over its own Kohn–Sham steps (as --model refined; --model density is the network alone); the same run
    without them gets the bundled correction ensemble, exit 0, with a warning that names why; --model bundled asks
    for the ensemble by name."""
    from nextham_dft.model.default import default_model

    run_dir = tmp_path / "si2"
    shutil.copytree(need(EXAMPLE), run_dir)
    with_upf = read_run(run_dir)
    assert default_model(with_upf) == (bundled_model_path("density"), None)
    res = run("predict", str(run_dir), "--out", str(tmp_path / "d"), "--no-native")
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    density_name = load_model(bundled_model_path("density"))[1]["name"]
    assert report["model"].startswith(density_name) and "refined" in report["model"] and not report["warnings"]
    assert report["probe"]["pulay_step"]["history"] == 3 and report["probe"]["pulay_step"]["residual"] > 0
    assert report["eval"]["predicted"]["ghost_states"] == 0
    alone = run("predict", str(run_dir), "--out", str(tmp_path / "alone"), "--no-native", "--model", "density")
    assert alone.exit_code == 0, alone.stderr
    alone = json.loads((tmp_path / "alone" / "report.json").read_text())
    assert alone["model"] == density_name and "pulay_step" not in alone["probe"]
    # the step brings the bands closer to the converged SCF's (Si2: 1.1 against 3.2 meV)
    assert (report["eval"]["predicted"]["band_mae_shifted_mev"]
            < 0.7 * alone["eval"]["predicted"]["band_mae_shifted_mev"])
    # no pseudopotential file: the density model cannot build H[ρ], the ensemble predicts, and says why
    (run_dir / "Si.upf").unlink()
    path, note = default_model(read_run(run_dir))
    assert path == bundled_model_path("bundled") and "Si" in note and "\n" not in note
    res = run("predict", str(run_dir), "--out", str(tmp_path / "v8"), "--no-native")
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "v8" / "report.json").read_text())
    assert report["model"] == load_model(bundled_model_path("bundled"))[1]["name"]
    assert note in report["warnings"][0] and note in res.stderr and report["ensemble"]["members"] == 2
    # and an orbital file the ensemble was not trained with: one line with its refusal and why the density model
    # was not used either
    orb = run_dir / "Si_gga_6au_100Ry_2s2p1d.orb"
    orb.write_text(orb.read_text() + "\n")
    refused = run("predict", str(run_dir), "--out", str(tmp_path / "refused"), "--no-native")
    assert_clean_error(refused)
    assert not (tmp_path / "refused").exists()
    assert "orbital file differs" in refused.stderr and note in refused.stderr
    named = run("predict", str(need(EXAMPLE)), "--out", str(tmp_path / "named"), "--no-native", "--model", "bundled")
    assert named.exit_code == 0, named.stderr
    assert json.loads((tmp_path / "named" / "report.json").read_text())["model"] == report["model"]
