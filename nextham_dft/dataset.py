"""The project's training format: canonical Systems in one HDF5 file.

Layout (format version 1), one group per structure, named by a unique id::

    /<id>                 attrs: formula, spin_mode, soc, nelec, smearing_method,
                                 smearing_sigma_ev, fermi_ev (JSON), source, code,
                                 bases (JSON: element, shells [l, zeta, rcut Å],
                                 source file, sha256, family)
      lattice  (3, 3) Å rows      positions (n, 3) Å Cartesian     kinds (n,)
      kpoints/frac (nk, 3), kpoints/weights (nk,)   [attr mesh]
      matrices/<H0|H|S>/  edge_i, edge_j (E,), R (E, 3), offsets (E+1,),
                          data (nnz,) float64 | (nnz, 2) | (nnz, 2, 2) complex128; attr spin
      reference/<H0|H>/   kpoints (nk, 3), eigenvalues (nk, nb) eV
      radial/<species>/<shell>   (2, n): r Å, R(r) Å^-3/2 (when the orbital files were read)
      atomic_density/<species>   (3, n): r Å, valence and core density e/Å³; attr info (JSON:
                          element, functional, z_valence, source, sha256), when the
                          pseudopotential files were read

Everything is canonical: eV, Å, e3nn real harmonics, half of the blocks stored
(hermiticity restores the rest; see :mod:`nextham_dft.core.blocks`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .core.atomic import AtomicDensity
from .core.basis import RadialFunction, SpeciesBasis
from .core.blocks import BlockSparse
from .core.kspace import Smearing
from .core.system import KPoints, System
from .errors import ParseError

FORMAT_VERSION = 1


def _bases_to_json(bases: list[SpeciesBasis]) -> str:
    return json.dumps([
        {"element": b.element, "shells": [[s.l, s.zeta, s.rcut] for s in b.shells], "source": b.source,
         "sha256": b.sha256, "family": b.family}
        for b in bases
    ])


def _bases_from_json(text: str) -> list[SpeciesBasis]:
    out = []
    for d in json.loads(text):
        shells = tuple(RadialFunction(int(l), int(z), float(rc)) for l, z, rc in d["shells"])
        out.append(SpeciesBasis(d["element"], shells, d.get("source", ""), d.get("sha256", ""), d.get("family", "")))
    return out


def _with_tables(bases: list[SpeciesBasis], radial) -> list[SpeciesBasis]:
    """The bases with the radial tables stored under ``radial/<species>/<shell>`` (files written before
    the tables were kept have none: the shells keep empty tables)."""
    if radial is None:
        return bases
    out = []
    for s, b in enumerate(bases):
        shells = []
        for h, sh in enumerate(b.shells):
            key = f"{s}/{h}"
            if key in radial:
                r, f = radial[key][()]
                sh = RadialFunction(sh.l, sh.zeta, sh.rcut, r, f)
            shells.append(sh)
        out.append(SpeciesBasis(b.element, tuple(shells), b.source, b.sha256, b.family))
    return out


def _atomic_densities(group, n_species: int) -> list[AtomicDensity]:
    """The per-species atomic densities stored under ``atomic_density/<species>`` (none in files
    written before they were kept, or when any species lacks one)."""
    if group is None or any(str(s) not in group for s in range(n_species)):
        return []
    out = []
    for s in range(n_species):
        ds = group[str(s)]
        r, val, core = ds[()]
        info = json.loads(ds.attrs["info"])
        out.append(AtomicDensity(info["element"], r, val, core, info["functional"], float(info["z_valence"]),
                                 info["source"], info["sha256"]))
    return out


def write_system(group, system: System) -> None:
    """Write one System into an (empty) h5py group."""
    group.attrs["format_version"] = FORMAT_VERSION
    group.attrs["formula"] = system.formula
    group.attrs["spin_mode"] = system.spin_mode
    group.attrs["soc"] = bool(system.soc)
    group.attrs["nelec"] = float(system.nelec) if system.nelec is not None else np.nan
    group.attrs["smearing_method"] = system.smearing.method
    group.attrs["smearing_sigma_ev"] = float(system.smearing.sigma)
    group.attrs["fermi_ev"] = json.dumps(system.fermi_ev)
    group.attrs["bases"] = _bases_to_json(system.bases)
    group.attrs["code"] = str(system.meta.get("code", ""))
    group.attrs["source"] = str(system.meta.get("source", system.meta.get("run_dir", "")))
    for s, b in enumerate(system.bases):  # radial tables (Å, Å^-3/2), when the adapter read them
        for h, sh in enumerate(b.shells):
            if len(sh.r):
                group.create_dataset(f"radial/{s}/{h}", data=np.stack([sh.r, sh.f]), compression="gzip",
                                     compression_opts=4)
    for s, d in enumerate(system.atomic_densities):  # pseudopotential densities (Å, e/Å³), when read
        ds = group.create_dataset(f"atomic_density/{s}", data=np.stack([d.r, d.valence, d.core]), compression="gzip",
                                  compression_opts=4)
        ds.attrs["info"] = json.dumps({"element": d.element, "functional": d.functional, "z_valence": d.z_valence,
                                       "source": d.source, "sha256": d.sha256})
    group["lattice"] = system.lattice
    group["positions"] = system.positions
    group["kinds"] = system.kinds
    if system.magmom is not None:
        group["magmom"] = system.magmom
    if system.kpoints is not None:
        k = group.create_group("kpoints")
        k["frac"] = system.kpoints.frac
        k["weights"] = system.kpoints.weights
        if system.kpoints.mesh is not None:
            k.attrs["mesh"] = list(system.kpoints.mesh)
    mg = group.create_group("matrices")
    for name, m in system.matrices.items():
        g = mg.create_group(name)
        g.attrs["spin"] = m.spin
        g["edge_i"] = m.edge_i.astype(np.int32)
        g["edge_j"] = m.edge_j.astype(np.int32)
        g["R"] = m.R.astype(np.int32)
        g["offsets"] = m.offsets
        g.create_dataset("data", data=m.data, compression="gzip", compression_opts=4, shuffle=True)
    rg = group.create_group("reference")
    for tag, (k, e) in system.reference_eigenvalues.items():
        g = rg.create_group(tag)
        g["kpoints"] = k
        g["eigenvalues"] = e


def read_system(group, matrices: tuple[str, ...] | None = None) -> System:
    """Read one System from an h5py group written by :func:`write_system`."""
    try:
        bases = _with_tables(_bases_from_json(group.attrs["bases"]), group.get("radial"))
        kinds = group["kinds"][()]
        system = System(
            lattice=group["lattice"][()],
            positions=group["positions"][()],
            kinds=kinds,
            bases=bases,
            spin_mode=str(group.attrs["spin_mode"]),
            soc=bool(group.attrs["soc"]),
            nelec=None if np.isnan(group.attrs["nelec"]) else float(group.attrs["nelec"]),
            smearing=Smearing(str(group.attrs["smearing_method"]), float(group.attrs["smearing_sigma_ev"])),
            fermi_ev={k: float(v) for k, v in json.loads(group.attrs["fermi_ev"]).items()},
            magmom=group["magmom"][()] if "magmom" in group else None,
        )
        if "kpoints" in group:
            k = group["kpoints"]
            mesh = tuple(int(x) for x in k.attrs["mesh"]) if "mesh" in k.attrs else None
            system.kpoints = KPoints(k["frac"][()], k["weights"][()], mesh)
        system.atomic_densities = _atomic_densities(group.get("atomic_density"), len(bases))
        norb = np.array([bases[k].norb for k in kinds])
        for name, g in group["matrices"].items():
            if matrices is not None and name not in matrices:
                continue
            system.matrices[name] = BlockSparse(norb, g["edge_i"][()], g["edge_j"][()], g["R"][()], g["offsets"][()],
                                                g["data"][()], str(g.attrs["spin"]))
        for tag, g in group.get("reference", {}).items():
            system.reference_eigenvalues[tag] = (g["kpoints"][()], g["eigenvalues"][()])
        system.meta = {"code": str(group.attrs.get("code", "")), "source": str(group.attrs.get("source", "")),
                       "id": group.name.strip("/")}
    except (KeyError, ValueError, TypeError) as exc:
        raise ParseError(getattr(group.file, "filename", "?"), f"{group.name}: not a nextham-dft dataset group ({exc})") from None
    return system


def list_ids(path: str | Path) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return sorted(f.keys())


def iter_dataset(path: str | Path, ids: list[str] | None = None, matrices: tuple[str, ...] | None = None) -> Iterator[System]:
    """Systems of a training file: those of ``ids`` in that order, or all in id order when ``ids`` is None
    (an empty list reads none: an empty split must not become the whole file)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ParseError(path, f"not an HDF5 file ({exc})") from None
    with f:
        for sid in sorted(f.keys()) if ids is None else ids:
            yield read_system(f[sid], matrices)
