"""DeepH format (DeepH-pack, DeepH-E3 and tools that read them): export and import.

Files: ``hamiltonians.h5`` and ``overlaps.h5`` (one dataset per block, key "[Rx, Ry, Rz, i, j]",
atoms 1-based, H in eV), ``element.dat`` (Z), ``site_positions.dat`` (Å, columns = atoms),
``lat.dat`` (Å, columns = lattice vectors), ``rlat.dat`` (2π A⁻¹, columns), ``orbital_types.dat``
(per atom the l of each shell), ``info.json`` (nsites, isorthogonal, isspinful, norbits,
fermi_level). Spinful blocks are spin-major (all up orbitals, then all down). DeepH's orbital
order and signs per l are the table below (OpenMX-like: p = x, y, z; d = z², x²−y², xy, xz, yz;
no Condon–Shortley phase).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nextham_dft.core.basis import RadialFunction, SpeciesBasis, orbital_transform
from nextham_dft.core.blocks import BlockSparse
from nextham_dft.core.sph import OrbitalConvention, code_to_canonical
from nextham_dft.core.system import System
from nextham_dft.errors import ParseError

DEEPH_CONVENTION = OrbitalConvention(
    "deeph",
    {
        0: ((0, 1),),
        1: ((1, 1), (-1, 1), (0, 1)),
        2: ((0, 1), (2, 1), (-2, 1), (1, 1), (-1, 1)),
        3: ((0, 1), (1, 1), (-1, 1), (2, 1), (-2, 1), (3, 1), (-3, 1)),
    },
)
FILES = ("hamiltonians.h5", "overlaps.h5", "element.dat", "site_positions.dat", "lat.dat", "rlat.dat",
         "orbital_types.dat", "info.json")


def _to_canonical(bases: list[SpeciesBasis]) -> list[np.ndarray]:
    per_l = {l: code_to_canonical(DEEPH_CONVENTION, l) for l in DEEPH_CONVENTION.table}
    return [orbital_transform(b, per_l) for b in bases]


def _blocks(m: BlockSparse):
    ei, ej, R, off, data = m.full_blocks()
    for e in range(len(ei)):
        shape = (m.norb[ei[e]], m.norb[ej[e]]) + data.shape[1:]
        yield ei[e], ej[e], R[e], data[off[e] : off[e + 1]].reshape(shape)


def write_deeph(directory: str | Path, system: System, source: str = "H") -> None:
    """Write the Hamiltonian ``source`` and S of a System as a DeepH folder (files in ``directory``)."""
    import h5py
    from pymatgen.core.periodic_table import Element

    d = Path(directory)
    back = [t.T for t in _to_canonical(system.bases)]
    h = system.matrices[source].transform_orbitals(system.kinds, back)
    s = system.matrices["S"].transform_orbitals(system.kinds, back)
    spinful = h.spin == "spinor"
    with h5py.File(d / "hamiltonians.h5", "w") as f:
        for i, j, R, b in _blocks(h):
            if spinful:  # (μ, ν, s, s') -> spin-major (s μ, s' ν)
                b = b.transpose(2, 0, 3, 1).reshape(2 * b.shape[0], 2 * b.shape[1])
            f[f"[{R[0]}, {R[1]}, {R[2]}, {i + 1}, {j + 1}]"] = b
    with h5py.File(d / "overlaps.h5", "w") as f:
        for i, j, R, b in _blocks(s):
            f[f"[{R[0]}, {R[1]}, {R[2]}, {i + 1}, {j + 1}]"] = b
    np.savetxt(d / "element.dat", [Element(e).Z for e in system.elements], fmt="%d")
    np.savetxt(d / "site_positions.dat", system.positions.T)
    np.savetxt(d / "lat.dat", system.lattice.T)
    np.savetxt(d / "rlat.dat", np.linalg.inv(system.lattice) * 2 * np.pi)
    with open(d / "orbital_types.dat", "w") as fh:
        for k in system.kinds:
            fh.write("  ".join(str(sh.l) for sh in system.bases[k].shells) + "\n")
    info = {"nsites": system.n_atoms, "isorthogonal": False, "isspinful": spinful, "norbits": int(system.norb.sum()),
            "fermi_level": float(system.fermi_ev.get(source, system.fermi_ev.get("H", 0.0)))}
    (d / "info.json").write_text(json.dumps(info))


def _key(k: str, path: Path) -> tuple[int, int, int, int, int]:
    try:
        v = [int(x) for x in k.strip("[]").split(",")]
    except ValueError:
        raise ParseError(path, f"bad block key {k!r}") from None
    if len(v) != 5:
        raise ParseError(path, f"bad block key {k!r}")
    return v[0], v[1], v[2], v[3] - 1, v[4] - 1


def read_deeph(directory: str | Path, source: str = "H") -> System:
    """A DeepH folder as a canonical System (its Hamiltonian stored under ``source``)."""
    import h5py
    from pymatgen.core.periodic_table import Element

    d = Path(directory)
    for f in FILES:
        if f != "rlat.dat" and not (d / f).is_file():
            raise ParseError(d / f, "missing file of a DeepH folder")
    try:
        info = json.loads((d / "info.json").read_text())
        z = np.atleast_1d(np.loadtxt(d / "element.dat", dtype=int))
        pos = np.loadtxt(d / "site_positions.dat").reshape(3, -1).T
        lat = np.loadtxt(d / "lat.dat").reshape(3, 3).T
        shells = [[int(x) for x in ln.split()] for ln in (d / "orbital_types.dat").read_text().splitlines() if ln.strip()]
    except (ValueError, json.JSONDecodeError) as exc:
        raise ParseError(d, f"malformed DeepH metadata ({exc})") from None
    if len(shells) != len(z) or len(pos) != len(z):
        raise ParseError(d, "element.dat, site_positions.dat and orbital_types.dat disagree on the number of atoms")
    kinds_key: dict[tuple, int] = {}
    bases: list[SpeciesBasis] = []
    kinds = []
    for zz, sh in zip(z, shells):
        key = (int(zz), tuple(sh))
        if key not in kinds_key:
            counts: dict[int, int] = {}
            rf = []
            for l in sorted(sh):
                rf.append(RadialFunction(l, counts.get(l, 0), 0.0))
                counts[l] = counts.get(l, 0) + 1
            if list(sh) != sorted(sh):
                raise ParseError(d / "orbital_types.dat", "shells not ordered by l are not supported")
            kinds_key[key] = len(bases)
            bases.append(SpeciesBasis(Element.from_Z(int(zz)).symbol, tuple(rf), "orbital_types.dat", "", "deeph"))
        kinds.append(kinds_key[key])
    kinds = np.array(kinds)
    norb = np.array([bases[k].norb for k in kinds])
    spinful = bool(info.get("isspinful", False))
    sysm = System(lattice=lat, positions=pos, kinds=kinds, bases=bases,
                  spin_mode="noncollinear" if spinful else "none", soc=spinful)
    to_can = _to_canonical(bases)
    aoff = np.concatenate([[0], np.cumsum(norb)])
    for fname, tag, spin in (("overlaps.h5", "S", False), ("hamiltonians.h5", source, spinful)):
        rows, cols, Rs, vals = [], [], [], []
        with h5py.File(d / fname, "r") as f:
            for k in f.keys():
                rx, ry, rz, i, j = _key(k, d / fname)
                b = f[k][()]
                ni, nj = norb[i], norb[j]
                if spin:
                    if b.shape != (2 * ni, 2 * nj):
                        raise ParseError(d / fname, f"block {k} has shape {b.shape}, expected {(2 * ni, 2 * nj)}")
                    b = b.reshape(2, ni, 2, nj).transpose(1, 3, 0, 2)
                elif b.shape != (ni, nj):
                    raise ParseError(d / fname, f"block {k} has shape {b.shape}, expected {(ni, nj)}")
                r, c = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
                rows.append(aoff[i] + r.ravel())
                cols.append(aoff[j] + c.ravel())
                Rs.append(np.tile([rx, ry, rz], (ni * nj, 1)))
                vals.append(b.reshape((ni * nj,) + b.shape[2:]))
        m = BlockSparse.from_coo(norb, np.concatenate(rows), np.concatenate(cols), np.concatenate(Rs),
                                 np.concatenate(vals), "spinor" if spin else "none")
        sysm.matrices[tag] = m.transform_orbitals(kinds, to_can)
    sysm.fermi_ev[source] = float(info.get("fermi_level", 0.0))
    sysm.meta = {"code": "deeph", "generation": "DeepH folder", "run_dir": str(d)}
    return sysm


class DeepHAdapter:
    """Registered as ``deeph``: a DeepH folder read as a run (its H as the converged one)."""

    name = "deeph"

    def detect(self, path: Path) -> bool:
        p = Path(path)
        return p.is_dir() and (p / "hamiltonians.h5").is_file() and (p / "orbital_types.dat").is_file()

    def read_run(self, path: Path, **options: Any) -> System:
        return read_deeph(path)


__all__ = ["DEEPH_CONVENTION", "DeepHAdapter", "read_deeph", "write_deeph"]
