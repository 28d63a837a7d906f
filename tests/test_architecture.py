"""One-way layers: adapters → core → model → writers/CLI; the core knows no file format or model."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                mod = ".".join(pkg + ((mod,) if mod else ()))
            out.add(mod)
    return out


def test_core_imports_no_adapter_model_cli_or_file_library():
    for p in (ROOT / "nextham_dft" / "core").glob("*.py"):
        for mod in imports(p):
            assert not mod.startswith(("nextham_dft.adapters", "adapters", "nextham_dft.cli", "nextham_dft.model",
                                       "nextham_dft.writers", "torch", "e3nn", "h5py")), f"{p.name} imports {mod}"


def test_adapters_do_not_import_cli_or_models():
    for p in (ROOT / "adapters").rglob("*.py"):
        for mod in imports(p):
            assert not mod.startswith(("nextham_dft.cli", "nextham_dft.model", "torch", "e3nn")), f"{p} imports {mod}"


def test_units_are_defined_once():
    """No hard-coded Rydberg/Bohr constants outside core/units.py."""
    for p in list((ROOT / "nextham_dft").rglob("*.py")) + list((ROOT / "adapters").rglob("*.py")):
        if p.name == "units.py":
            continue
        text = p.read_text()
        for const in ("13.6056", "0.52917", "27.2113", "1.88972"):
            assert const not in text, f"{p} hard-codes {const}"
