"""Shared test fixtures: paths to ../shared (skipped with a reason when absent) and the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "abacus-dojo-fr"
FIXTURES = SHARED / "fixtures"
EXAMPLE = ROOT / "examples" / "abacus-si2"


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
