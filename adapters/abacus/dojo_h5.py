"""Reader of the compact ABACUS dataset file (``abacus-dojo-fr/dataset.h5``).

One group per structure: attributes (meta.json, verbatim STRU/KPT/INPUT texts),
groups H0, H (Ry) and S, each a per-R CSR over orbitals in ABACUS's order, only
R ≥ 0 stored; SOC data as (a, bx, by, bz) with
H_spinor = a ⊗ 1 + i Σ_c b_c ⊗ σ_c.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nextham_dft.core.blocks import BlockSparse, ab_to_spinor
from nextham_dft.core.kspace import Smearing
from nextham_dft.core.system import KPoints, System
from nextham_dft.core.units import RY_TO_EV
from nextham_dft.errors import ParseError

from .inputs import abacus_positions, read_input, read_kpt, read_stru
from .run import _nelec, _smearing, canonical_transforms, read_atomic_densities, read_basis


def _csr_group(g, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    dim = int(g.attrs["dim"])
    R = g["R"][()]
    nnz = g["nnz"][()]
    indptr = g["indptr"][()].reshape(len(R), dim + 1)
    indices = g["indices"][()]
    data = g["data"][()]
    if indptr[:, -1].tolist() != nnz.tolist() or nnz.sum() != len(indices):
        raise ParseError(path, f"{g.name}: inconsistent CSR arrays")
    rows = np.concatenate([np.repeat(np.arange(dim), np.diff(indptr[r])) for r in range(len(R))])
    Rall = np.repeat(R, nnz, axis=0)
    return rows, indices.astype(np.int64), Rall, data, dim


def structure_ids(path: str | Path) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return sorted(f.keys())


def read_structure(path: str | Path, sid: str, pp_orb: str | Path | None = None) -> System:
    """One structure of dataset.h5 as a canonical System (H0, H, S in eV; eigenvalues)."""
    import h5py

    path = Path(path)
    pp_orb = Path(pp_orb) if pp_orb is not None else path.parent / "pp_orb"
    with h5py.File(path, "r") as f:
        if sid not in f:
            raise ParseError(path, f"no structure {sid!r}")
        g = f[sid]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
        with tempfile.TemporaryDirectory() as td:
            tdp = Path(td)
            (tdp / "STRU").write_text(attrs["STRU"])
            (tdp / "KPT").write_text(attrs["KPT"])
            (tdp / "INPUT").write_text(attrs.get("INPUT_scf") or attrs["INPUT_h0"])
            params = read_input(tdp / "INPUT")
            params["orbital_dir"] = str(pp_orb)
            params["pseudo_dir"] = str(pp_orb)
            stru = read_stru(tdp / "STRU", params.get("latname", "none"))
            kpt = read_kpt(tdp / "KPT")
        labels = [sp.label for sp in stru.species]
        kinds = np.array([labels.index(l) for l in stru.labels], dtype=np.int64)
        bases, _ = read_basis(pp_orb, stru, params)
        densities, why = read_atomic_densities(pp_orb, stru, params)
        norb = np.array([bases[k].norb for k in kinds], dtype=np.int64)
        nspin = int(attrs.get("nspin", params.get("nspin", 1)))
        transforms = canonical_transforms(bases)
        system = System(
            lattice=stru.lattice,
            positions=abacus_positions(stru),
            kinds=kinds,
            bases=bases,
            spin_mode="noncollinear" if nspin == 4 else "none",
            soc=params.get("lspinorb", "0").lower() in ("1", "true"),
            nelec=_nelec(pp_orb, stru, params, kinds, [], densities),
            smearing=_smearing(params) if params else Smearing(),
            magmom=stru.magmom,
        )
        if kpt.kind == "mesh":
            system.kpoints = KPoints.from_mesh(kpt.mesh, kpt.shift)
        system.atomic_densities = densities
        for tag in ("S", "H0", "H"):
            if tag not in g:
                continue
            rows, cols, R, data, dim = _csr_group(g[tag], str(path))
            if dim != int(norb.sum()):
                raise ParseError(path, f"{sid}/{tag}: dimension {dim} ≠ {int(norb.sum())} orbitals of the basis")
            data = np.asarray(data, dtype=np.float64)
            if tag == "S":
                m = BlockSparse.from_coo(norb, rows, cols, R, data, "none")
            elif data.ndim == 2:  # (a, bx, by, bz)
                spinor = ab_to_spinor(data[:, 0], data[:, 1:])
                m = BlockSparse.from_coo(norb, rows, cols, R, spinor * RY_TO_EV, "spinor")
            else:
                m = BlockSparse.from_coo(norb, rows, cols, R, data * RY_TO_EV, "none")
            system.matrices[tag] = m.transform_orbitals(kinds, transforms)
        for tag in ("H0", "H"):
            if f"eigenvalues_{tag}" in g:
                system.reference_eigenvalues[tag] = (g[f"kpoints_{tag}"][()], g[f"eigenvalues_{tag}"][()])
        if attrs.get("scf_efermi_ev") not in (None, "null"):
            try:
                system.fermi_ev["H"] = float(attrs["scf_efermi_ev"])
            except (TypeError, ValueError):
                pass
        system.meta = {"code": "abacus", "source": f"{path}:{sid}", "id": sid, "generation": "abacus-dojo dataset.h5",
                       **({"atomic_densities_missing": why} if why else {}),
                       "meta": {k: v for k, v in attrs.items() if k not in ("STRU", "KPT", "INPUT_h0", "INPUT_scf")}}
    return system


def iter_structures(path: str | Path, ids: list[str] | None = None) -> Iterator[System]:
    """Structures of dataset.h5: those of ``ids`` in that order, or all when ``ids`` is None (an empty
    list reads none)."""
    for sid in structure_ids(path) if ids is None else ids:
        yield read_structure(path, sid)


def is_dojo_dataset(path: str | Path) -> bool:
    """A quick check that ``path`` is an HDF5 file laid out like dataset.h5."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            k = next(iter(f.keys()), None)
            return k is not None and "STRU" in f[k].attrs and "S" in f[k]
    except (OSError, StopIteration):
        return False


__all__ = ["read_structure", "structure_ids", "iter_structures", "is_dojo_dataset", "json"]
