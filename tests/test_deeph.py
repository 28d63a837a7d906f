"""DeepH-format export and import: round trip, DeepH's orbital convention, eigenvalues."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from nextham_dft.adapters.abacus import read_run
from nextham_dft.adapters.abacus.convention import ABACUS_CONVENTION
from nextham_dft.adapters.deeph import DEEPH_CONVENTION, read_deeph
from nextham_dft.cli import main
from nextham_dft.core.sph import code_to_canonical

from .conftest import DATA, EXAMPLE, need
from .test_cli import assert_clean_error


def test_abacus_to_deeph_matrices_are_deeph_packs():
    """Our two tables compose to DeepH-pack's ABACUS→DeepH matrices (signed permutations)."""
    expected = {1: (np.eye(3)[[1, 2, 0]], [0, 1]), 2: (np.eye(5)[[0, 3, 4, 1, 2]], [3, 4]),
                3: (np.eye(7), [1, 2, 5, 6])}
    for l, (u, minus) in expected.items():
        u = u.copy()
        u[minus] *= -1
        ours = code_to_canonical(DEEPH_CONVENTION, l).T @ code_to_canonical(ABACUS_CONVENTION, l)
        assert np.allclose(ours, u, atol=1e-12), l


@pytest.mark.parametrize("run", ["example", "t0045"])
def test_export_import_round_trip(tmp_path, run):
    src = need(EXAMPLE) if run == "example" else need(DATA / "runs" / run)
    out = tmp_path / "deeph"
    res = CliRunner().invoke(main, ["export", str(src), "--source", "scf", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    back = read_deeph(out)
    orig = read_run(src)
    for tag in ("H", "S"):
        assert back.matrices[tag].max_abs_diff(orig.matrices[tag]) < 1e-10
    k = orig.reference_eigenvalues["H"][0][:3]
    assert np.allclose(back.bands("H", k), orig.bands("H", k), atol=1e-8)
    # the folder is a run for every command
    res = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert res.exit_code == 0 and '"deeph"' in res.output


def test_bad_deeph_folder(tmp_path):
    out = tmp_path / "d"
    assert CliRunner().invoke(main, ["export", str(need(EXAMPLE)), "--out", str(out)]).exit_code == 0
    (out / "element.dat").write_text("14\n")  # one atom fewer than the positions
    assert_clean_error(CliRunner().invoke(main, ["info", str(out)]))
