"""The network-free Krylov secant (core.krylov, predict --model krylov)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nextham_dft.cli import main
from nextham_dft.core.krylov import secant_coefficients

from .conftest import EXAMPLE, need


def _three_node(beta: float, lams: tuple[float, float], weights=(0.7, 1.3, 0.4), dim: int = 40, seed: int = 0):
    """Δρ1 = p0 + p1 + p2 with J p0 = 0, J p_i = λ_i p_i (p's orthogonal: J self-adjoint), u = βJΔρ1, u2 = Ju; the
    Gram matrix of (Δρ1, u, u2), the vectors and the fixed point (1 − J)⁻¹Δρ1."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, 3)))
    p = [w * q[:, i] for i, w in enumerate(weights)]
    d1 = p[0] + p[1] + p[2]
    jd = lams[0] * p[1] + lams[1] * p[2]
    j2d = lams[0] ** 2 * p[1] + lams[1] ** 2 * p[2]
    vectors = (d1, beta * jd, beta * j2d)
    gram = np.array([[a @ b for b in vectors] for a in vectors])
    return gram, vectors, p[0] + p[1] / (1 - lams[0]) + p[2] / (1 - lams[1])


@pytest.mark.parametrize("beta,lams", [(0.3, (-3.0, -0.4)), (0.5, (-0.9, -0.05)), (0.3, (-6.0, -2.5))])
def test_the_secant_is_the_fixed_point_of_a_three_node_screening(beta, lams):
    """For a response with an unscreened part and two screening constants, the three-node form recovers the nodes
    and the converged change exactly, from the Gram matrix of the three Krylov vectors alone."""
    gram, vectors, fixed = _three_node(beta, lams)
    coefficients, nodes, form = secant_coefficients(gram, beta)
    assert form == "three-node" and sorted(nodes) == pytest.approx(sorted(lams), rel=1e-8)
    assert np.allclose(sum(c * v for c, v in zip(coefficients, vectors)), fixed, atol=1e-10)


def test_the_secant_falls_back_where_the_moments_do_not_allow_three_nodes():
    """One screening constant (u2 a multiple of u): the three-node fit is singular, and the two-node form gives the
    exact Δρ1/(1 − λ); a response that amplifies gets the first-order step Δρ1 + u/β."""
    beta, lam = 0.3, -2.0
    rng = np.random.default_rng(1)
    d1 = rng.normal(size=30)
    vectors = (d1, beta * lam * d1, beta * lam**2 * d1)
    gram = np.array([[a @ b for b in vectors] for a in vectors])
    coefficients, nodes, form = secant_coefficients(gram, beta)
    assert form == "two-node" and nodes[0] == pytest.approx(lam)
    assert np.allclose(sum(c * v for c, v in zip(coefficients, vectors)), d1 / (1 - lam), atol=1e-10)
    amplify = (d1, 0.2 * d1, 0.1 * d1)
    gram = np.array([[a @ b for b in amplify] for a in amplify])
    assert secant_coefficients(gram, beta)[2] == "first-order"


def test_predict_model_krylov_on_the_example(tmp_path):
    """`predict --model krylov` on the shipped Si2 run: no network; bands and H far closer to the converged SCF than
    H(0)'s, no ghost state, the secant reported; `--scf-steps 1` continues from its density; a run without its
    pseudopotential file is a one-line error and writes nothing."""
    import shutil

    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "k"), "--model", "krylov",
                                    "--no-native"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "k" / "report.json").read_text())
    ev = report["eval"]
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.02 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["h_mae_shifted_mev"] < 0.02 * ev["h0"]["h_mae_shifted_mev"]
    assert ev["predicted"]["ghost_states"] == 0 and report["model"].startswith("krylov")
    assert len(report["warnings"]) == 1 and "experimental" in report["warnings"][0]
    kry = report["probe"]["krylov"]
    assert kry["form"] in ("three-node", "two-node", "first-order") and len(kry["coefficients"]) == 3
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "s"), "--model", "krylov",
                                    "--no-native", "--scf-steps", "1"])
    assert res.exit_code == 0, res.output
    steps = json.loads((tmp_path / "s" / "report.json").read_text())
    assert steps["scf"]["iterations"] == 1 and steps["scf"]["start"] == "predicted density"
    run = tmp_path / "no-upf"
    shutil.copytree(need(EXAMPLE), run)
    (run / "Si.upf").unlink()
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "x"), "--model", "krylov"])
    assert res.exit_code != 0 and "Si.upf" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_predict_model_krylov_refuses_a_magnetic_run(tmp_path):
    """A spin–orbit run with a real starting moment: the Krylov secant, like the density model, treats the
    magnetisation as zero, so it refuses the run in one line and writes nothing."""
    import shutil

    from .conftest import DATA
    from .test_cli import assert_clean_error

    soc = tmp_path / "soc"
    shutil.copytree(need(DATA / "runs" / "t0045"), soc)
    stru = (soc / "STRU").read_text()
    (soc / "STRU").write_text(stru.replace("\n2e-05\n", "\n1.5\n", 1))
    res = CliRunner().invoke(main, ["predict", str(soc), "--out", str(tmp_path / "o"), "--model", "krylov",
                                    "--orbital-dir", str(DATA / "pp_orb")])
    assert_clean_error(res)
    assert "magnetic" in res.stderr and not (tmp_path / "o").exists()


def test_the_krylov_prediction_rotates_with_the_crystal_and_is_hermitian():
    """A rotated (and inverted) Si2 gets the rotated H (its grid rotates with the fractional coordinates; the
    secant's coefficients come from inner products, which a rotation keeps), and H(k) is hermitian."""
    from scipy.spatial.transform import Rotation

    from adapters.abacus import AbacusAdapter
    from nextham_dft.core.kspace import KAssembler
    from nextham_dft.model.density_predict import predict_krylov

    from .conftest import assert_rotates_with_crystal

    si2 = AbacusAdapter().read_run(need(EXAMPLE))
    q = -Rotation.random(random_state=7).as_matrix()  # a rotation times inversion
    assert_rotates_with_crystal(lambda system: predict_krylov(system).hamiltonian, si2, q, 1e-8)
    hk = KAssembler(predict_krylov(si2).hamiltonian)(np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]]))
    assert np.abs(hk - hk.conj().transpose(0, 2, 1)).max() < 1e-10 * np.abs(hk).max()
