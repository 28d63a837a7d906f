"""The accuracy diagnostics in scripts/diagnostics/: their k-space transforms are exact where they must be."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from nextham_dft.adapters.abacus import read_run
from nextham_dft.core.kspace import KAssembler

from .conftest import EXAMPLE, ROOT, need

sys.path.insert(0, str(ROOT / "scripts" / "diagnostics"))
from diag_common import spin_free  # noqa: E402
from near_null_filter import filter_near_null  # noqa: E402
from overlap_spectrum_error import binned_error  # noqa: E402


@pytest.fixture(scope="module")
def example():
    system = read_run(need(EXAMPLE))
    h0 = system.matrices["H0"]
    true = spin_free(h0, system.matrices["H"].aligned_to(h0).data - h0.data)
    return system, h0.with_data(true, "none")


def test_near_null_filter_without_damping_gives_back_the_blocks(example):
    """s0 → 0 makes g(S) = 1: the k-mesh holds every stored R once, so the round trip is exact."""
    system, dh = example
    back = filter_near_null(dh, system.matrices["S"], s0=1e-12)
    assert np.allclose(back, dh.data, atol=1e-9 * np.abs(dh.data).max())
    damped = filter_near_null(dh, system.matrices["S"], s0=0.5)  # a strong filter changes the blocks
    assert np.abs(damped - dh.data).max() > 1e-3 * np.abs(dh.data).max()


def test_overlap_spectrum_bins_add_up_to_the_orthonormalised_error(example):
    """Σ over the S-eigenvalue bins = |S^-1/2 E S^-1/2|² summed over k (the k-space loss's norm)."""
    system, dh = example
    k = np.array([[0.0, 0.0, 0.0], [0.25, 0.125, 0.5]])
    sk = KAssembler(system.matrices["S"])(k)
    w, v = np.linalg.eigh(sk)
    err = KAssembler(dh)(k)
    x = np.einsum("kij,kj,klj->kil", v, 1.0 / np.sqrt(w), v.conj())
    total = float(np.sum(np.abs(x @ err @ x) ** 2))
    assert binned_error(err, w, v).sum() == pytest.approx(total, rel=1e-10)


def test_capacity_probe_measures_what_eval_reports(example):
    """The probe's H MAE after μS of H(0) (ΔH = 0) is eval's h_mae_shifted_mev for H(0), computed on
    the padded graph; its error shares add up to 1 both ways."""
    from capacity_probe import error_shares, shifted_mae

    from nextham_dft.evaluation import evaluate
    from nextham_dft.model.graph import build_graph
    from nextham_dft.model.irreps import BasisLayout

    system, _ = example
    layout = BasisLayout()
    g, _ = build_graph(system, layout, dtype=torch.float64)
    spans = [slice(0, len(g.edge_src))]
    zero = torch.zeros_like(g.target)
    got = shifted_mae(zero, g, spans)[0]
    want = evaluate(system, system.matrices["H0"])["predicted"]["h_mae_shifted_mev"]
    assert got == pytest.approx(want, rel=1e-6)
    assert shifted_mae(g.target, g, spans)[0] == pytest.approx(0.0, abs=1e-9)  # the true ΔH
    shares = error_shares(zero, g, spans, layout)
    assert sum(shares["class"].values()) == pytest.approx(1.0, abs=1e-9)
    assert sum(shares["l"].values()) == pytest.approx(1.0, abs=1e-9)


def test_capacity_probe_stops_when_its_minutes_are_spent(tmp_path, tiny_dataset):
    """--minutes: the cosine schedule runs over wall-clock time and the fit ends when it is spent, far
    below the --steps cap, with the last step reported and the error shares printed."""
    import re
    import subprocess

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  hidden_irreps: 4x0e+2x1o+2x1e+1x2e+1x2o\n  num_layers: 1\n  mlp_hidden: 8\n"
                   "  embed_dim: 4\n")
    res = subprocess.run([sys.executable, str(ROOT / "scripts/diagnostics/capacity_probe.py"), str(cfg),
                          str(tiny_dataset), "--ids", "abacus-si2", "--steps", "1000000", "--every", "100000",
                          "--minutes", "0.05"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = [(int(m[1]), float(m[2])) for m in re.finditer(r"^step\s+(\d+)\s+(\d+) s", res.stdout, re.M)]
    assert steps[0][0] == 0 and 0 < steps[-1][0] < 1000000 and steps[-1][1] >= 3.0
    assert "fit error shares by block" in res.stdout
