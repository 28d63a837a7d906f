"""The residual selection between the density model's prediction and the Krylov secant (predict --model select)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from nextham_dft.cli import main

from .conftest import EXAMPLE, need


@pytest.fixture(scope="module")
def si2_step():
    """(system, SelfConsistency, bundled density model, its first step) of the shipped Si2 run."""
    from adapters.abacus import AbacusAdapter
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.model.density_net import density_sites
    from nextham_dft.model.density_train import first_step
    from nextham_dft.model.store import bundled_model_path, load_model

    system = AbacusAdapter().read_run(need(EXAMPLE))
    model = load_model(bundled_model_path("density"))[0].double().eval()
    sc = SelfConsistency(system, model.cfg.spacing)
    step = first_step(sc, model.cfg, density_sites(system, model.cfg)[0])
    return system, sc, model, step


def test_the_krylov_secant_reuses_a_density_models_first_steps(si2_step):
    """Given the model's first step and probe, the secant takes only the second probe and gives the same density as
    from scratch; steps taken with another β are refused."""
    from nextham_dft.core.krylov import krylov_secant

    _, sc, model, step = si2_step
    own = krylov_secant(sc, model.cfg.probe)
    shared = krylov_secant(sc, model.cfg.probe, first=(step.steps[0], step.steps[1]))
    change = np.abs(own.density - sc.rho_atoms).max()
    assert change > 1e-4 and np.abs(shared.density - own.density).max() < 1e-9 * change
    with pytest.raises(ValueError, match="probe"):
        krylov_secant(sc, 0.5, first=(step.steps[0], step.steps[1]))


def test_the_selection_keeps_the_smaller_residual(si2_step):
    """Each candidate's residual is ∫|ρ_out(H[ρ]) − ρ| / N_e; the atoms' density (the first step's residual) loses to
    the Krylov secant whichever comes first, and the secant's residual is far below it (it is near the fixed point)."""
    from nextham_dft.core.krylov import krylov_secant
    from nextham_dft.model.density_predict import select_by_residual

    _, sc, model, step = si2_step
    secant = krylov_secant(sc, model.cfg.probe, first=(step.steps[0], step.steps[1])).density
    for order in (("atoms", "secant"), ("secant", "atoms")):
        densities = {"atoms": sc.rho_atoms, "secant": secant}
        kept, cands = select_by_residual(sc, {name: densities[name] for name in order})
        assert kept == "secant"
    out, _ = sc.density(sc.hamiltonian(secant))
    assert cands["secant"].residual == pytest.approx(sc.residual_norm(out - secant), rel=1e-10)
    assert cands["atoms"].residual == pytest.approx(sc.residual_norm(step.steps[0][1] - sc.rho_atoms), rel=1e-10)
    assert cands["secant"].residual < 0.05 * cands["atoms"].residual


def test_a_completion_from_a_measured_output_is_the_same(si2_step):
    """complete_scf(start_output=...) skips the first diagonalisation and changes nothing."""
    from nextham_dft.core.scf import ScfSettings, complete_scf
    from nextham_dft.model.density_predict import evaluate_candidate

    system, sc, _, step = si2_step
    rho = step.steps[1][0]  # the probe's input: a density away from the fixed point
    cand = evaluate_candidate(sc, rho)
    cfg = ScfSettings(tol=0.0, max_iter=2)
    a = complete_scf(system, settings=cfg, start_density=rho, consistency=sc, start_hamiltonian=cand.hamiltonian,
                     start_output=(cand.output, cand.fermi_ev))
    b = complete_scf(system, settings=cfg, start_density=rho, consistency=sc)
    assert a.residuals[0] == pytest.approx(cand.residual, rel=1e-12)
    assert np.allclose(a.residuals, b.residuals, rtol=1e-10)
    assert np.abs(a.hamiltonian.data - b.hamiltonian.data).max() < 1e-10
    with pytest.raises(ValueError, match="starting output"):
        complete_scf(system, settings=cfg, consistency=sc, start_output=(cand.output, cand.fermi_ev))


def test_predict_model_select_on_the_example(tmp_path):
    """`predict --model select` on Si2: both residuals reported, the kept one the smaller; bands and H far closer to
    the converged SCF than H(0)'s, no ghost state; `--scf-steps 1` starts from the kept candidate's own evaluation
    (its first residual is that candidate's); `export --source predicted --model select` writes the same kind of
    prediction; a run without its pseudopotential is a one-line error that writes nothing."""
    from .test_cli import assert_clean_error

    ex = str(need(EXAMPLE))
    res = CliRunner().invoke(main, ["predict", ex, "--out", str(tmp_path / "p"), "--model", "select", "--no-native"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    probe, ev = report["probe"], report["eval"]
    assert set(probe["residuals"]) == {"network", "krylov"}
    assert probe["selected"] == min(probe["residuals"], key=probe["residuals"].get)
    assert "select" in report["model"] and report["warnings"] == []
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.02 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["h_mae_shifted_mev"] < 0.05 * ev["h0"]["h_mae_shifted_mev"]
    assert ev["predicted"]["ghost_states"] == 0
    res = CliRunner().invoke(main, ["predict", ex, "--out", str(tmp_path / "s"), "--model", "select", "--no-native",
                                    "--scf-steps", "1"])
    assert res.exit_code == 0, res.output
    steps = json.loads((tmp_path / "s" / "report.json").read_text())["scf"]
    assert steps["iterations"] == 1
    assert steps["residuals"][0] == pytest.approx(probe["residuals"][probe["selected"]], rel=1e-9)
    res = CliRunner().invoke(main, ["export", ex, "--source", "predicted", "--model", "select",
                                    "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "hamiltonians.h5").exists()
    run = tmp_path / "no-upf"
    shutil.copytree(need(EXAMPLE), run)
    (run / "Si.upf").unlink()
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "x"), "--model", "select"])
    assert_clean_error(res)
    assert "Si.upf" in res.stderr and not (tmp_path / "x").exists()


def test_the_selection_hands_its_steps_to_a_completion(si2_step):
    """predict_selected's steps: the secant's three (the first step, both probes) and the other candidate's evaluation,
    not the kept one's, which is ``output`` (the completion's start: its pair is added there, once)."""
    from nextham_dft.model.density_predict import predict_selected

    system, _, model, _ = si2_step
    p = predict_selected(model, system)
    assert len(p.steps) == 4 and p.output is not None
    assert not any(np.array_equal(x, p.density) for x, _ in p.steps)
    assert np.allclose(p.steps[0][0], p.consistency.rho_atoms)
    out, _ = p.consistency.density(p.hamiltonian)
    assert np.abs(out - p.output[0]).max() < 1e-10 * np.abs(out).max()


def test_the_refined_prediction_is_one_pulay_step_over_the_models_steps(si2_step):
    """predict_refined = predict_density then complete_scf(max_iter=1, prior_history) from it: the same H to rounding,
    its history the first step, the probe and the prediction's evaluation; its residual is smaller than the
    network's own prediction's (the step moves towards the fixed point)."""
    from nextham_dft.core.scf import ScfSettings, complete_scf
    from nextham_dft.model.density_predict import predict_density, predict_refined, select_by_residual

    system, _, model, _ = si2_step
    p = predict_density(model, system)
    r = predict_refined(model, system)
    by_hand = complete_scf(system, settings=ScfSettings(tol=0.0, max_iter=1, prior_history=True),
                           start_density=p.density, consistency=p.consistency, prior=p.steps,
                           start_hamiltonian=p.hamiltonian)
    assert np.abs(r.hamiltonian.data - by_hand.hamiltonian.data).max() < 1e-9
    assert r.probe["pulay_step"]["history"] == 3 and len(r.steps) == 3
    _, cands = select_by_residual(p.consistency, {"prediction": p.density, "refined": r.density})
    assert cands["refined"].residual < cands["prediction"].residual


def test_the_refined_prediction_rotates_with_the_crystal():
    """A rotated (and inverted) Si2 gets the rotated refined H: the network, the Pulay weights (inner products on a
    grid that rotates with the fractional coordinates) and the Kerker step are all covariant."""
    from scipy.spatial.transform import Rotation

    from adapters.abacus import AbacusAdapter
    from nextham_dft.model.density_predict import predict_refined
    from nextham_dft.model.store import bundled_model_path, load_model

    from .conftest import assert_rotates_with_crystal

    si2 = AbacusAdapter().read_run(need(EXAMPLE))
    model = load_model(bundled_model_path("density"))[0].double().eval()
    q = -Rotation.random(random_state=11).as_matrix()
    assert_rotates_with_crystal(lambda system: predict_refined(model, system).hamiltonian, si2, q, 1e-6)


def test_eval_takes_the_density_routes(tiny_dataset, tmp_path):
    """`nextham-dft eval refined DATA` scores predict's default route: bands far better than H(0)'s and than the
    network alone (`eval density`), its name in the JSON; `eval select` runs the selection."""
    scores = {}
    for name in ("refined", "density", "select"):
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(main, ["eval", name, str(tiny_dataset), "--split", "all", "--json", str(out)])
        assert res.exit_code == 0, res.output
        data = json.loads(out.read_text())
        scores[name] = data["summary"]["predicted"]["band_mae_shifted_mev"]
        assert data["summary"]["predicted"]["band_mae_shifted_mev"] < 0.05 * data["summary"]["h0"]["band_mae_shifted_mev"]
        assert ("refined" in data["model"]) == (name == "refined") and ("select" in data["model"]) == (name == "select")
    assert scores["refined"] < 0.7 * scores["density"]


def test_the_default_continues_with_completion_steps(tmp_path):
    """`predict --scf-steps 2` without --model: the refined prediction, then two completion steps from its density
    (start 'predicted density'); H after μS moves closer to the converged SCF's than the refined prediction alone."""
    ex = str(need(EXAMPLE))
    alone = CliRunner().invoke(main, ["predict", ex, "--out", str(tmp_path / "a"), "--no-native"])
    steps = CliRunner().invoke(main, ["predict", ex, "--out", str(tmp_path / "s"), "--no-native", "--scf-steps", "2"])
    assert alone.exit_code == 0 and steps.exit_code == 0, alone.output + steps.output
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    s = json.loads((tmp_path / "s" / "report.json").read_text())
    assert "refined" in s["model"] and s["scf"]["iterations"] == 2 and s["scf"]["start"] == "predicted density"
    assert s["eval"]["predicted"]["h_mae_shifted_mev"] < a["eval"]["predicted"]["h_mae_shifted_mev"]


def test_a_completion_keeps_only_pulays_history(si2_step):
    """ScfResult.steps holds the last ``history`` (ρ_in, ρ_out) pairs, the last one the input of the final
    diagonalisation, so a long SCF on a big grid keeps no more densities than Pulay does."""
    from nextham_dft.core.scf import ScfSettings, complete_scf

    system, sc, _, _ = si2_step
    res = complete_scf(system, settings=ScfSettings(tol=0.0, max_iter=3, history=2), consistency=sc)
    assert res.iterations == 3 and len(res.steps) == 2
    out, _ = sc.density(sc.hamiltonian(res.steps[-1][0]))
    assert sc.residual_norm(out - res.steps[-1][0]) == pytest.approx(res.residuals[-1], rel=1e-10)
