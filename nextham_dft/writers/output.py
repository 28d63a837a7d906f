"""Safe output folders: built in a temporary sibling, then renamed into place.

Existing files are never modified: a folder that exists is an error, unless it is
a previous nextham-dft output (it carries a marker file) and ``force`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nextham_dft.errors import OutputExistsError

MARKER = ".nextham-output"


@contextlib.contextmanager
def output_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``path`` atomically, on failure it vanishes."""
    path = Path(path)
    if path.exists():
        if not (path / MARKER).is_file():
            raise OutputExistsError(f"{path} exists and is not a nextham-dft output: choose a new --out folder")
        if not force:
            raise OutputExistsError(f"{path} exists (a previous nextham-dft output): use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / MARKER).write_text("written by nextham-dft\n")
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file through a temporary name in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
