"""Choosing the zeroth step and the converged SCF among the calculations found in a run folder.

Adapters list their steps (objects with ``name`` and ``kind``: 'zeroth', 'converged', …) and the
names a user may give for each; the choice and its errors are the same for every code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from .errors import RunDirectoryError

S = TypeVar("S")


def pick_step(steps: Sequence[S], kind: str, explicit: str | None,
              aliases: Callable[[S], tuple[str, ...]] = lambda s: (s.name,)) -> S | None:  # type: ignore[attr-defined]
    """The step of ``kind`` (None when there is none); ``explicit`` names one; two of a kind is an error."""
    if explicit:
        for s in steps:
            if explicit in aliases(s):
                return s
        raise RunDirectoryError(f"no step {explicit!r}; found: {', '.join(s.name for s in steps) or 'none'}")  # type: ignore[attr-defined]
    found = [s for s in steps if s.kind == kind]  # type: ignore[attr-defined]
    if len(found) > 1:
        names = ", ".join(s.name for s in found)  # type: ignore[attr-defined]
        raise RunDirectoryError(f"several {kind} steps ({names}): choose one with "
                                f"--{'zeroth' if kind == 'zeroth' else 'converged'}")
    return found[0] if found else None
