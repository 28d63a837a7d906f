"""ABACUS adapter: INPUT/STRU/KPT, NAO .orb files, sparse H(R)/S(R) of every generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nextham_dft.core.system import System

from .run import find_steps, matrix_files, read_run


class AbacusAdapter:
    """Registered as ``abacus`` in the ``nextham_dft.adapters`` entry-point group."""

    name = "abacus"

    def detect(self, path: Path) -> bool:
        path = Path(path)
        if not path.is_dir():
            return False
        if (path / "STRU").is_file():
            return True
        return any(p.is_dir() and p.name.startswith("OUT.") for p in path.iterdir())

    def near_miss(self, path: Path) -> str | None:
        """Why a folder that ``detect`` rejects still looks like part of an ABACUS run, or None."""
        path = Path(path)
        if not path.is_dir():
            return None
        found = [p.name for p in matrix_files(path)]
        if not found:
            return None
        return (f"it holds ABACUS matrices ({', '.join(found)}) but no STRU "
                "and no OUT.* folder: put them in the run directory beside its INPUT, STRU and KPT")

    def read_run(self, path: Path, **options: Any) -> System:
        return read_run(path, **options)

    def steps(self, path: Path):
        return find_steps(path)

    def write_prediction(self, directory: Path, system: System) -> str:
        """The predicted H(R) and S(R) in the sparse-file generation that was read, under
        ``directory/abacus/`` (so ABACUS's own tools read them), under the file names that were read;
        for NPZ archives the text files of the same ABACUS (2025 generation); the folder name."""
        from .writers import S_NAME_2026, write_hs

        (directory / "abacus").mkdir()
        generation = system.meta.get("csr_generation") or "old"
        s_name, h_names = system.meta.get("s_file_name"), system.meta.get("h_file_names")
        if generation == "npz":  # text files of the same ABACUS
            generation, h_names = "2025", None
            s_name = S_NAME_2026 if s_name == "sr_nao.npz" else None
        write_hs(directory / "abacus", system, "H", generation, s_name, h_names)
        return "abacus/"

    def write_restart(self, directory: Path, run_dir: Path, system: System, source: str) -> dict[str, Any]:
        """SCF starting files (cube density, H(R), DM(R), INPUTs) of Hamiltonian ``source``; a summary."""
        from .restart import write_restart

        info = write_restart(directory, run_dir, system, source)
        info["how"] = "cd {out} && abacus     (or first: cp INPUT.init_chg_hr INPUT, ABACUS ≥ 3.11)"
        return info


__all__ = ["AbacusAdapter", "read_run", "find_steps"]
