"""Shared test fixtures: paths to ../shared (skipped with a reason when absent) and the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "abacus-dojo-fr"
FIXTURES = SHARED / "fixtures"
EXAMPLE = ROOT / "examples" / "abacus-si2"


def assert_rotates_with_crystal(predict, system, q, rel: float) -> None:
    """predict(rotate(system, q)) equals rotate(predict(system), q) on S's blocks: the mean deviation below ``rel``
    times the mean change the prediction makes to H(0) (which must be a real change, so the check can fail)."""
    import numpy as np

    from nextham_dft.testing import rotate_matrix, rotate_system

    a = predict(system)
    b = predict(rotate_system(system, q))
    expected = rotate_matrix(a, system.kinds, system.bases, q)
    s = system.matrices["S"]
    change = np.abs(a.aligned_to(s).data - system.matrices["H0"].aligned_to(s).data).mean()
    assert change > 1e-3  # the prediction moved H, so the comparison can fail
    assert np.abs(b.aligned_to(s).data - expected.aligned_to(s).data).mean() < rel * change


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is absent in a fresh clone)")
    return path


@pytest.fixture
def data_dir() -> Path:
    return need(DATA)


@pytest.fixture
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A training file of the shipped example three times (model, training and CUDA tests)."""
    from click.testing import CliRunner

    from nextham_dft.cli import main

    out = tmp_path_factory.mktemp("ds") / "train.h5"
    ex = str(need(EXAMPLE))
    res = CliRunner().invoke(main, ["dataset", "build", ex, ex, ex, "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    return out
