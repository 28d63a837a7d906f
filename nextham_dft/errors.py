"""Typed errors. The CLI turns each into one line on stderr and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class NexthamError(Exception):
    """Base class of every error the package raises on bad input."""


class ParseError(NexthamError):
    """A file could not be read: which file, where, and why."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class RunDirectoryError(NexthamError):
    """A directory is not a usable run of a DFT code (missing or ambiguous steps)."""


class BasisError(NexthamError):
    """An orbital basis is missing, unreadable or inconsistent with the matrices."""


class BasisMismatchError(BasisError):
    """A basis does not match what a model was trained with."""


class OverlapNotPositiveDefiniteError(NexthamError):
    """S(k) is not positive definite: the basis is (near) linearly dependent."""


class OutputExistsError(NexthamError):
    """An output would overwrite existing files without --force."""


class MissingDataError(NexthamError, KeyError):
    """A run lacks something a command needs (a matrix, k-points, the electron count)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedError(NexthamError):
    """A run needs physics a command does not implement (an exchange–correlation functional, a spin mode)."""
