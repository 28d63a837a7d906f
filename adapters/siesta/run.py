"""Read a SIESTA run (a folder with its .fdf and .HSX or .TSHS) into a canonical System, through sisl.

sisl reads the fdf (with %include), the HSX of SIESTA 4 and 5, TSHS, DM and ion files; this
module turns what sisl returns into canonical objects: shells sorted by l (SIESTA keeps the
order of the basis definition), SIESTA's harmonics converted (:mod:`.convention`), spin
components assembled into spinor blocks, R = the supercell index of the column orbital.

A *step* is one matrix file with its fdf: ``MaxSCFIterations 1`` (or ``SCF.MaxIterations 1``)
is the zeroth step, anything else a converged SCF. Several steps may sit in sub-folders.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextham_dft.core.basis import RadialFunction, SpeciesBasis, file_sha256, orbital_transform
from nextham_dft.core.blocks import BlockSparse, check_hermitian, spinor_from_spin_entries
from nextham_dft.core.kspace import Smearing
from nextham_dft.core.sph import code_to_canonical
from nextham_dft.core.system import KPoints, System
from nextham_dft.core.units import ANG_TO_BOHR
from nextham_dft.errors import BasisError, ParseError, RunDirectoryError
from nextham_dft.steps import pick_step

from .convention import SIESTA_CONVENTION
from .outputs import read_eig, read_kp, read_log_facts

FAMILY = "siesta-pao"
MATRIX_SUFFIXES = (".HSX", ".TSHS")


@dataclass
class Step:
    name: str
    directory: Path
    fdf: Path | None
    matrix: Path
    label: str
    kind: str
    notes: list[str] = field(default_factory=list)


def _sisl():
    import sisl

    return sisl


def _fdf(path: Path):
    sisl = _sisl()
    try:
        return sisl.get_sile(str(path))
    except Exception as exc:  # noqa: BLE001 - sisl raises many kinds
        raise ParseError(path, f"cannot read fdf ({exc})") from None


def _fdf_get(fdf, key: str, default=None, unit: str | None = None):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = fdf.get(key, unit=unit) if unit else fdf.get(key)
        return default if v is None else v
    except Exception:  # noqa: BLE001
        return default


def _max_scf(fdf) -> int | None:
    for key in ("MaxSCFIterations", "SCF.MaxIterations", "SCF.Max.Iterations"):
        v = _fdf_get(fdf, key)
        if v is not None:
            try:
                return int(float(v))
            except (TypeError, ValueError):
                return None
    return None


def kgrid(fdf) -> tuple[tuple[int, int, int], tuple[float, float, float]] | None:
    """The Monkhorst–Pack mesh and shift of an fdf (list form ``[n1 n2 n3]`` or the diagonal block form)."""
    for key in ("kgrid.MonkhorstPack", "kgrid_Monkhorst_Pack"):
        v = _fdf_get(fdf, key)
        if v is None:
            continue
        try:
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
                rows = [[float(x) for x in ln.split()] for ln in v[:3]]
                mesh = tuple(int(round(rows[k][k])) for k in range(3))
                shift = tuple(float(rows[k][3]) if len(rows[k]) > 3 else 0.0 for k in range(3))
            else:
                arr = np.asarray(v, dtype=float).reshape(-1)[:3]
                mesh, shift = tuple(int(x) for x in arr), (0.0, 0.0, 0.0)
            if all(n > 0 for n in mesh):
                return mesh, shift  # type: ignore[return-value]
        except (ValueError, IndexError, TypeError):
            return None
    return None


def mesh_of_points(kfrac: np.ndarray, nmax: int = 64) -> tuple[int, int, int] | None:
    """The smallest diagonal mesh containing SIESTA's k-points (Γ-centred or half-step shifted), e.g. when
    the fdf only gives ``kgrid.Cutoff``; None when no mesh up to ``nmax`` fits."""
    out = []
    for c in range(3):
        x = kfrac[:, c]
        for n in range(1, nmax + 1):
            y = x * n
            if np.all(np.abs(y - np.round(y)) < 1e-4) or np.all(np.abs(y - 0.5 - np.round(y - 0.5)) < 1e-4):
                out.append(n)
                break
        else:
            return None
    return tuple(out)  # type: ignore[return-value]


def _steps_in(directory: Path) -> list[Step]:
    out = []
    fdfs = sorted(p for p in directory.glob("*.fdf") if p.name != "out.fdf")
    labels = {}
    for f in fdfs:
        fd = _fdf(f)
        lab = _fdf_get(fd, "SystemLabel", "siesta")
        labels[str(lab)] = (f, fd)
    mats = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in MATRIX_SUFFIXES)
    by_label: dict[str, Path] = {}
    for m in mats:  # prefer LABEL.HSX over LABEL.TSHS and over the legacy LABEL.1.HSX
        lab = m.name[: -len(m.suffix)]
        if lab.endswith(".1") and lab[:-2] in {x.name[: -len(x.suffix)] for x in mats}:
            continue
        lab = lab[:-2] if lab.endswith(".1") else lab
        if lab not in by_label or m.suffix == ".HSX":
            by_label[lab] = m
    for lab, m in sorted(by_label.items()):
        f, fd = labels.get(lab, (fdfs[0], _fdf(fdfs[0])) if fdfs else (None, None))
        n = _max_scf(fd) if fd is not None else None
        kind = "zeroth" if n == 1 else "converged"
        name = directory.name if directory != Path(".") else "."
        out.append(Step(name, directory, f, m, lab, kind,
                        [f"MaxSCFIterations {n}" if n is not None else "MaxSCFIterations not set (SIESTA default)"]))
    return out


def find_steps(run: str | Path) -> list[Step]:
    """Matrix files (HSX, TSHS) of a run folder and its immediate sub-folders, classified."""
    run = Path(run)
    if not run.is_dir():
        raise RunDirectoryError(f"{run}: not a directory")
    steps = _steps_in(run)
    for d in sorted(p for p in run.iterdir() if p.is_dir()):
        for s in _steps_in(d):
            s.name = d.name
            steps.append(s)
    if len(steps) > 1:
        for s in steps:
            s.name = f"{s.name}/{s.matrix.name}" if s.directory == run else s.name
    return steps


def _pick(steps: list[Step], kind: str, explicit: str | None) -> Step | None:
    return pick_step(steps, kind, explicit, lambda s: (s.name, s.matrix.name, s.label, s.directory.name))


# ---------------------------------------------------------------------------- basis


def _shell_order(atom) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """Shells of a sisl Atom in file order as (l, index of the first orbital), grouped by (n, l, zeta, P)."""
    shells, start = [], 0
    orbs = atom.orbitals
    while start < len(orbs):
        o = orbs[start]
        l = int(o.l)
        if l < 0:
            raise BasisError(f"{atom.symbol}: orbital {start + 1} has no angular momentum (not an atomic orbital)")
        ms = [int(orbs[start + k].m) for k in range(2 * l + 1)] if start + 2 * l + 1 <= len(orbs) else []
        if ms != list(range(-l, l + 1)):
            raise BasisError(f"{atom.symbol}: orbitals {start + 1}.. are not a complete l={l} shell in SIESTA's m order")
        shells.append((l, start))
        start += 2 * l + 1
    return shells, []


def _basis_of(atom, ion_dir: Path) -> tuple[SpeciesBasis, np.ndarray]:
    """Canonical basis of a species and the permutation (canonical orbital → SIESTA orbital)."""
    shells, _ = _shell_order(atom)
    order = sorted(range(len(shells)), key=lambda k: (shells[k][0], k))  # stable by l
    zeta_count: dict[int, int] = {}
    rf, perm = [], []
    rc = _ion_cutoffs(atom.symbol, atom.tag, ion_dir)
    for k in order:
        l, start = shells[k]
        z = zeta_count.get(l, 0)
        zeta_count[l] = z + 1
        r = getattr(atom.orbitals[start], "R", -1.0)
        rcut = float(r) if r and r > 0 else rc.get(k, 0.0)
        rf.append(RadialFunction(l, z, rcut))
        perm += list(range(start, start + 2 * l + 1))
    for s in rf:
        if s.l not in SIESTA_CONVENTION.table:
            raise BasisError(f"{atom.symbol}: angular momentum l={s.l} is not supported")
    src, sha = f"{atom.tag}.ion", ""
    for cand in (ion_dir / f"{atom.tag}.ion.xml", ion_dir / f"{atom.tag}.ion"):
        if cand.is_file():
            src, sha = cand.name, file_sha256(cand.read_bytes())
            break
    return SpeciesBasis(atom.symbol, tuple(rf), src, sha, FAMILY), np.array(perm)


def _ion_cutoffs(symbol: str, tag: str, ion_dir: Path) -> dict[int, float]:
    """Cutoff radius (Å) per shell (file order) from an .ion.xml beside the run, when there is one."""
    p = ion_dir / f"{tag}.ion.xml"
    if not p.is_file():
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atom = _sisl().get_sile(str(p)).read_basis()
        shells, _ = _shell_order(atom)
        return {k: float(atom.orbitals[s].R) for k, (_, s) in enumerate(shells)}
    except Exception:  # noqa: BLE001 - the cutoff is informative only
        return {}


def _basis_atoms(step: Step) -> list:
    """sisl Atoms (species order) with full orbital quantum numbers, from the fdf's basis sources (ion files,
    ORB_INDX); empty when one lacks them."""
    out = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if step.fdf is not None:
                atoms = _fdf(step.fdf).read_basis()
            else:
                atoms = None
            if not atoms:
                oi = step.directory / f"{step.label}.ORB_INDX"
                atoms = _sisl().get_sile(str(oi)).read_basis() if oi.is_file() else []
        for a in atoms or []:
            if not all(hasattr(o, "l") for o in a.orbitals):
                return []
            out.append(a)
    except Exception:  # noqa: BLE001 - reported by the caller as a missing basis
        return []
    return out


def canonical_transforms(bases: list[SpeciesBasis]) -> list[np.ndarray]:
    per_l = {l: code_to_canonical(SIESTA_CONVENTION, l) for l in SIESTA_CONVENTION.table}
    return [orbital_transform(b, per_l) for b in bases]


# ---------------------------------------------------------------------------- matrices


def _read_matrix(path: Path):
    sisl = _sisl()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sile = sisl.get_sile(str(path))
            H = sile.read_hamiltonian()
            # sisl returns HSX (layouts 1, 2) and TSHS Hamiltonians with E_F at zero; put the absolute
            # level back, it is part of what the model corrects (checked against .EIG for both files)
            name = type(sile).__name__
            if (name == "hsxSileSiesta" and getattr(sile, "version", 0) >= 1) or name == "tshsSileSiesta":
                H.shift(sile.read_fermi_level())
            return H
    except Exception as exc:  # noqa: BLE001 - sisl raises many kinds on bad files
        raise ParseError(path, f"cannot read SIESTA matrix file ({type(exc).__name__}: {exc})") from None


def _entries(H):
    """(rows, cols, R, component matrix (nnz, ncomp)) of a sisl sparse matrix; R = supercell index."""
    csr = H._csr
    g = H.geometry
    ptr, ncol, col = csr.ptr, csr.ncol, csr.col
    rows = np.repeat(np.arange(g.no), ncol)
    idx = np.concatenate([np.arange(ptr[r], ptr[r] + ncol[r]) for r in range(g.no)]) if g.no else np.zeros(0, int)
    cols = col[idx]
    R = g.o2isc(cols)
    return rows, cols % g.no, np.asarray(R, dtype=np.int64), csr._D[idx]


def _to_blocks(H, perm_global: np.ndarray, norb: np.ndarray, path: Path) -> tuple[BlockSparse, BlockSparse]:
    """H (eV) and S of a sisl Hamiltonian as BlockSparse in canonical orbital order (SIESTA harmonics still)."""
    rows, cols, R, D = _entries(H)
    inv = np.empty_like(perm_global)
    inv[perm_global] = np.arange(len(perm_global))
    rows, cols = inv[rows], inv[cols]
    spin = H.spin
    S = BlockSparse.from_coo(norb, rows, cols, R, D[:, H.S_idx].real if not H.orthogonal else np.ones(len(rows)), "none")
    if spin.is_unpolarized:
        h = BlockSparse.from_coo(norb, rows, cols, R, D[:, 0].real, "none")
    elif spin.is_polarized:
        h = BlockSparse.from_coo(norb, rows, cols, R, D[:, :2].real.copy(), "collinear")
    else:
        if spin.is_noncolinear:
            uu, dd = D[:, 0], D[:, 1]
            ud = D[:, 2] + 1j * D[:, 3]
            du = D[:, 2] - 1j * D[:, 3]
        else:  # spin–orbit: sisl's 8 real components
            uu, dd = D[:, 0] + 1j * D[:, 4], D[:, 1] + 1j * D[:, 5]
            ud, du = D[:, 2] + 1j * D[:, 3], D[:, 6] + 1j * D[:, 7]
        n = len(rows)
        z, o = np.zeros(n, int), np.ones(n, int)
        h = spinor_from_spin_entries(norb, np.tile(rows, 4), np.tile(cols, 4), np.tile(R, (4, 1)),
                                     np.concatenate([z, o, z, o]), np.concatenate([z, o, o, z]),
                                     np.concatenate([uu, dd, ud, du]))
    return check_hermitian(h, str(path)), check_hermitian(S, str(path))


# ---------------------------------------------------------------------------- run


def read_run(run: str | Path, *, zeroth: str | None = None, converged: str | None = None,
             load_matrices: bool = True, **_ignored) -> System:
    """Structure, basis, H(0) and/or converged H, S, k-points and eigenvalues of a SIESTA run."""
    run = Path(run)
    steps = find_steps(run)
    if not steps:
        raise RunDirectoryError(f"{run}: no SIESTA .HSX or .TSHS file (set SaveHS true or TS.HS.Save)")
    s0, sc = _pick(steps, "zeroth", zeroth), _pick(steps, "converged", converged)
    used = [s for s in (s0, sc) if s is not None]  # every step is one or the other (find_steps)
    mats = {id(s): _read_matrix(s.matrix) for s in used}
    H = mats[id(used[0])]
    g = H.geometry
    kinds_of_atom = np.asarray(g.atoms.species, dtype=np.int64)
    bases, perms = [], []
    fallback = _basis_atoms(used[0]) if any(not hasattr(o, "l") for a in g.atoms.atom for o in a.orbitals) else []
    for k, atom in enumerate(g.atoms.atom):
        if any(not hasattr(o, "l") for o in atom.orbitals):  # TSHS: no quantum numbers (nor elements) stored
            if k >= len(fallback) or fallback[k].no != atom.no:
                raise BasisError(f"{used[0].matrix.name} stores no orbital quantum numbers and no matching basis "
                                 f"(.ion.xml / .ORB_INDX beside the fdf) was found for species {k + 1}")
            atom = fallback[k]
        b, p = _basis_of(atom, used[0].directory)
        bases.append(b)
        perms.append(p)
    # drop species no atom uses, keep the order of first use
    norb = np.array([bases[k].norb for k in kinds_of_atom], dtype=np.int64)
    if int(norb.sum()) != g.no:
        raise BasisError(f"{used[0].matrix}: {g.no} orbitals, the species' bases give {int(norb.sum())}")
    aoff = np.concatenate([[0], np.cumsum(norb)])
    perm_global = np.concatenate([aoff[a] + perms[k] for a, k in enumerate(kinds_of_atom)]) if len(norb) else np.zeros(0, int)
    spin = H.spin
    spin_mode = "none" if spin.is_unpolarized else "collinear" if spin.is_polarized else "noncollinear"
    fd = _fdf(used[0].fdf) if used[0].fdf is not None else None
    temp = _fdf_get(fd, "ElectronicTemperature", None, unit="eV") if fd is not None else None
    occ = str(_fdf_get(fd, "OccupationFunction", "FD")).lower() if fd is not None else "fd"
    system = System(
        lattice=np.asarray(g.cell, dtype=float),
        positions=np.asarray(g.xyz, dtype=float),
        kinds=kinds_of_atom,
        bases=bases,
        spin_mode=spin_mode,
        soc=bool(spin.is_spinorbit),
        smearing=Smearing("mp" if occ.startswith("mp") else "fd", float(temp) if temp is not None else 0.02585),
    )
    transforms = canonical_transforms(bases)
    for tag, st in (("H0", s0), ("H", sc)):
        if st is None:
            continue
        Hs = mats[id(st)]
        if Hs.geometry.no != g.no or Hs.spin.kind != spin.kind:
            raise RunDirectoryError(f"{st.name} and {used[0].name} are not the same system (orbitals or spin differ)")
        if load_matrices:
            h, S = _to_blocks(Hs, perm_global, norb, st.matrix)
            system.matrices[tag] = h.transform_orbitals(kinds_of_atom, transforms)
            system.matrices.setdefault("S", S.transform_orbitals(kinds_of_atom, transforms))
        eig, kp = st.directory / f"{st.label}.EIG", st.directory / f"{st.label}.KP"
        if eig.is_file():
            ef, e = read_eig(eig)
            system.fermi_ev[tag] = ef
            if kp.is_file():
                kc, w = read_kp(kp)
                kfrac = kc @ (system.lattice * ANG_TO_BOHR).T / (2 * np.pi)
                if len(kfrac) == e.shape[-2]:
                    system.reference_eigenvalues[tag] = (kfrac, e)
                    if system.kpoints is None:
                        mg = kgrid(_fdf(st.fdf)) if st.fdf is not None else None
                        system.kpoints = KPoints(kfrac, w, mg[0] if mg else mesh_of_points(kfrac))
    facts: dict[str, object] = {}
    for name in ("RUN.out", f"{used[0].label}.out", "siesta.out"):
        p = used[0].directory / name
        if p.is_file():
            facts = read_log_facts(p)
            break
    system.nelec = facts.get("nelec")  # type: ignore[assignment]
    system.meta = {
        "code": "siesta",
        "run_dir": str(run),
        "generation": f"SIESTA {used[0].matrix.suffix[1:]}" + (f" (sisl {_sisl().__version__})"),
        "version": str(facts.get("version", "")),
        "steps": [{"name": s.name, "kind": s.kind, "files": s.matrix.name, "notes": s.notes} for s in steps],
        "zeroth_step": s0.name if s0 else None,
        "converged_step": sc.name if sc else None,
        "species_labels": [a.tag for a in g.atoms.atom],
        # a Γ-only run keeps no auxiliary supercell: every periodic image is folded into R = 0,
        # so blocks no longer belong to one bond (fine for Γ bands, not for geometry-aware models)
        "gamma_folded": bool(np.all(np.asarray(g.lattice.nsc) == 1)),
    }
    return system


def band_path_eigenvalues(run: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """SIESTA's own band-structure eigenvalues (.bands) with their fractional k-points (BandLines)."""
    from .outputs import band_lines_kpoints, read_bands

    run = Path(run)
    for st in find_steps(run):
        bands = st.directory / f"{st.label}.bands"
        if not bands.is_file() or st.fdf is None:
            continue
        fd = _fdf(st.fdf)
        rows = _fdf_get(fd, "BandLines")
        if not rows:
            continue
        H = _read_matrix(st.matrix)
        alat = _fdf_get(fd, "LatticeConstant", 1.0, unit="Ang")
        k = band_lines_kpoints(list(rows), str(_fdf_get(fd, "BandLinesScale", "pi/a")), np.asarray(H.geometry.cell),
                               float(alat))
        _ef, _x, e = read_bands(bands)
        if len(k) == e.shape[-2]:
            return k, e
    return None
