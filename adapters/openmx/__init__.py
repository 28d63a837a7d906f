"""OpenMX adapter: .scfout (layouts of OpenMX ≤ 3.8 and 3.9), the .dat input, .Band eigenvalues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nextham_dft.core.system import System

from .run import find_steps, read_run


class OpenMXAdapter:
    """Registered as ``openmx`` in the ``nextham_dft.adapters`` entry-point group."""

    name = "openmx"

    def detect(self, path: Path) -> bool:
        path = Path(path)
        if path.is_file():
            return path.suffix == ".scfout"
        if not path.is_dir():
            return False
        return any(path.glob("*.scfout")) or any(d.is_dir() and any(d.glob("*.scfout")) for d in path.iterdir())

    def read_run(self, path: Path, **options: Any) -> System:
        return read_run(path, **options)

    def steps(self, path: Path):
        return find_steps(path)


__all__ = ["OpenMXAdapter", "read_run", "find_steps"]
