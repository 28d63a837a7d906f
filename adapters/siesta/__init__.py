"""SIESTA adapter (through sisl): .fdf, .HSX (SIESTA 4 and 5), .TSHS, .EIG/.KP; every spin mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nextham_dft.core.system import System

from .run import find_steps, read_run


class SiestaAdapter:
    """Registered as ``siesta`` in the ``nextham_dft.adapters`` entry-point group."""

    name = "siesta"

    def detect(self, path: Path) -> bool:
        path = Path(path)
        if not path.is_dir():
            return False

        def has(d: Path) -> bool:
            return any(d.glob("*.fdf")) and (any(d.glob("*.HSX")) or any(d.glob("*.TSHS")))

        return has(path) or any(d.is_dir() and has(d) for d in path.iterdir())

    def read_run(self, path: Path, **options: Any) -> System:
        return read_run(path, **options)

    def steps(self, path: Path):
        return find_steps(path)

    def write_restart(self, directory: Path, run_dir: Path, system: System, source: str) -> dict[str, Any]:
        """The density matrix ``LABEL.DM`` of Hamiltonian ``source``; a summary."""
        from .restart import write_dm

        info = write_dm(directory, run_dir, system, source)
        info["files"] = [info["file"]]
        info["how"] = "copy {out}/" + info["file"] + " beside your fdf and set DM.UseSaveDM true"
        return info


__all__ = ["SiestaAdapter", "read_run", "find_steps"]
