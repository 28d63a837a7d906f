"""Adapter registry: DFT codes plug in through the ``nextham_dft.adapters`` entry-point group.

An adapter is a class with a ``name``, ``detect(path) -> bool`` (cheap: file
names only) and ``read_run(path, **options) -> System``; it may add writers.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .core.system import System
from .errors import NexthamError, RunDirectoryError

GROUP = "nextham_dft.adapters"


@runtime_checkable
class Adapter(Protocol):
    name: str

    def detect(self, path: Path) -> bool: ...

    def read_run(self, path: Path, **options: Any) -> System: ...


_BUILTIN = {
    "abacus": "nextham_dft.adapters.abacus:AbacusAdapter",
    "deeph": "nextham_dft.adapters.deeph:DeepHAdapter",
    "openmx": "nextham_dft.adapters.openmx:OpenMXAdapter",
    "siesta": "nextham_dft.adapters.siesta:SiestaAdapter",
}
_cache: dict[str, Adapter] | None = None


def _load(spec: str) -> Any:
    mod, _, attr = spec.partition(":")
    module = __import__(mod, fromlist=[attr])
    return getattr(module, attr)


def available() -> dict[str, Adapter]:
    """All registered adapters by name (entry points, plus the built-in ones)."""
    global _cache
    if _cache is None:
        found: dict[str, Adapter] = {}
        for ep in entry_points(group=GROUP):
            cls = ep.load()
            inst = cls()
            if not isinstance(inst, Adapter):
                raise TypeError(f"adapter {ep.name} does not implement name/detect/read_run")
            found[ep.name] = inst
        for name, spec in _BUILTIN.items():
            if name not in found:
                found[name] = _load(spec)()
        _cache = found
    return _cache


def adapter_for(path: str | Path, code: str | None = None) -> Adapter:
    """The adapter named ``code``, or the one that recognises ``path``."""
    path = Path(path)
    ads = available()
    if code:
        if code not in ads:
            raise NexthamError(f"unknown code {code!r} (available: {', '.join(sorted(ads))})")
        return ads[code]
    if not path.exists():
        raise RunDirectoryError(f"{path}: no such file or directory")
    hits = [a for a in ads.values() if a.detect(path)]
    if not hits:
        hints = [h for a in ads.values() if (h := getattr(a, "near_miss", lambda _p: None)(path))]
        why = f": {hints[0]}" if hints else ""
        raise RunDirectoryError(f"{path}: not a run directory of any supported code ({', '.join(sorted(ads))}){why}")
    return hits[0]


def read_run(path: str | Path, code: str | None = None, **options: Any) -> System:
    """Read a run directory with the right adapter."""
    return adapter_for(path, code).read_run(Path(path), **options)
