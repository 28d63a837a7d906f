"""Open ABACUS text files, plain or compressed (.xz, .gz), and locate them."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

from nextham_dft.errors import ParseError

COMPRESSED_SUFFIXES = ("", ".xz", ".gz")


def find(directory: Path, name: str) -> Path | None:
    """``directory/name`` or its .xz/.gz twin, whichever exists first; else None."""
    for suf in COMPRESSED_SUFFIXES:
        p = directory / (name + suf)
        if p.is_file():
            return p
    return None


def logical_name(path: Path) -> str:
    """File name without a compression suffix."""
    name = path.name
    for suf in (".xz", ".gz"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def read_text(path: str | Path) -> str:
    """Whole file as text, decompressing .xz/.gz; a clear ParseError on failure."""
    path = Path(path)
    try:
        if path.suffix == ".xz":
            with lzma.open(path, "rt", errors="strict") as fh:
                return fh.read()
        if path.suffix == ".gz":
            with gzip.open(path, "rt", errors="strict") as fh:
                return fh.read()
        return path.read_text()
    except FileNotFoundError:
        raise ParseError(path, "file not found") from None
    except (lzma.LZMAError, EOFError, OSError) as exc:
        raise ParseError(path, f"cannot decompress or read: {exc}") from None
    except UnicodeDecodeError:
        raise ParseError(path, "not a text file") from None


def strip_comment(line: str) -> str:
    """A line without its trailing ``//`` or ``#`` comment."""
    for mark in ("//", "#"):
        k = line.find(mark)
        if k >= 0:
            line = line[:k]
    return line.strip()
