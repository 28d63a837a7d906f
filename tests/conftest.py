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
