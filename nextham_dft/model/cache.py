"""An on-disk cache of per-structure graph inputs that are slow to compute (local-potential integrals).

Training reads every structure of a dataset at the start of each stage, and the two members of a
parallel recipe do so at the same time; the three-centre integrals of ``core.potential`` take seconds
per structure. They depend only on the structure and on (widths, grid step), so they are kept in an
HDF5 file beside the dataset, one array per structure id, written under a file lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ..core.potential import potential_integrals
from ..core.system import System


#: bumped whenever core.potential's integrals change (2: Gaussian tails summed to 7σ instead of 5σ)
INTEGRALS_VERSION = 2


def potential_cache_path(data: str | Path, sigmas, spacing: float) -> Path:
    """``DATA.lp-<digest>.h5`` beside the dataset file, the digest naming the widths, the grid step and
    the dataset file's size and modification time (a rebuilt dataset never meets a stale cache)."""
    data = Path(data)
    st = data.stat()
    key = json.dumps({"sigmas": [float(s) for s in sigmas], "spacing": float(spacing), "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns, "integrals": INTEGRALS_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return data.with_name(f"{data.name}.lp-{digest}.h5")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (POSIX; where fcntl is absent, no lock: runs that
    share a cache file there should start one after the other)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_potential_integrals(path: Path | None, system: System, sigmas, spacing: float) -> np.ndarray:
    """``potential_integrals(system, sigmas, H0, spacing)`` (float32), read from the cache file ``path``
    when it holds the structure's id with the right shape, else computed and added to it. ``path``
    None, or a folder that cannot be written, computes without caching."""
    h0 = system.matrices["H0"]
    sid = str(system.meta.get("id", ""))
    shape = (int(h0.offsets[-1]), system.n_atoms, len(sigmas))
    if path is None or not sid:
        return potential_integrals(system, sigmas, h0, spacing=spacing)
    try:
        with _locked(path):
            if path.exists():
                with h5py.File(path, "r") as f:
                    if sid in f and f[sid].shape == shape:
                        return f[sid][()]
            values = potential_integrals(system, sigmas, h0, spacing=spacing).astype(np.float32)
            with h5py.File(path, "a") as f:
                if sid in f:
                    del f[sid]
                f.create_dataset(sid, data=values)
            return values
    except OSError:
        return potential_integrals(system, sigmas, h0, spacing=spacing)
