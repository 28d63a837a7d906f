"""Read an OpenMX run (a folder, or one .scfout file) into a canonical System.

A *step* is one ``.scfout`` file; its embedded input (or the ``.dat`` beside it) says what it
is: ``scf.maxIter 1`` is the zeroth step (the Hamiltonian of the initial superposition of
atomic densities, before any SCF update), anything else a converged SCF. A folder may hold
one step, or several (side by side or one per sub-folder), like ABACUS's OUT.* folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextham_dft.core.basis import SpeciesBasis, orbital_transform, shells_from_zetas
from nextham_dft.core.blocks import BlockSparse, check_hermitian, spinor_from_spin_entries
from nextham_dft.core.kspace import Smearing
from nextham_dft.core.sph import code_to_canonical
from nextham_dft.core.system import KPoints, System
from nextham_dft.core.units import BOHR_TO_ANG, HARTREE_TO_EV, KELVIN_TO_EV
from nextham_dft.errors import BasisError, ParseError, RunDirectoryError
from nextham_dft.steps import pick_step

from .convention import OPENMX_CONVENTION
from .inputs import OpenMXInput, atom_labels, kgrid, max_iter, parse_input, read_input, species
from .outputs import read_band
from .scfout import Scfout, read_scfout

FAMILY = "openmx-pao"


@dataclass
class Step:
    name: str
    scfout: Path
    kind: str  # zeroth | converged
    notes: list[str] = field(default_factory=list)


def _input_for(path: Path, sc: Scfout | None = None) -> OpenMXInput:
    """The input of a step: the copy embedded in the .scfout, else a .dat beside it."""
    if sc is not None and "definition.of.atomic.species" in sc.input_text.lower():
        return parse_input(sc.input_text, f"{path} (embedded input)")
    dats = sorted(path.parent.glob("*.dat"))
    for d in dats:
        inp = read_input(d)
        if "definition.of.atomic.species" in inp.blocks:
            return inp
    raise RunDirectoryError(f"{path}: no input found (neither embedded in the .scfout nor a .dat beside it)")


def _embedded_max_iter(path: Path) -> int | None:
    """scf.maxIter of the input embedded at the end of a .scfout (cheap: reads the tail only)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 400_000))
            tail = fh.read().decode("latin-1")
    except OSError as exc:
        raise ParseError(path, f"cannot read: {exc}") from None
    for line in tail.replace("\0", "\n").splitlines():
        tok = line.split("#", 1)[0].split()
        if len(tok) >= 2 and tok[0].lower() == "scf.maxiter":
            try:
                return int(float(tok[1]))
            except ValueError:
                return None
    return None


def find_steps(run: str | Path) -> list[Step]:
    """Every .scfout of a run folder (and its immediate sub-folders), classified."""
    run = Path(run)
    if run.is_file():
        files = [run]
    elif run.is_dir():
        files = sorted(run.glob("*.scfout")) + sorted(p for d in sorted(run.iterdir()) if d.is_dir()
                                                       for p in d.glob("*.scfout"))
    else:
        raise RunDirectoryError(f"{run}: no such file or directory")
    steps = []
    for f in files:
        n = _embedded_max_iter(f)
        if n is None:
            dats = sorted(f.parent.glob("*.dat"))
            n = max_iter(read_input(dats[0])) if dats else None
        kind = "zeroth" if n == 1 else "converged"
        name = str(f.relative_to(run)) if run.is_dir() else f.name
        steps.append(Step(name, f, kind, [f"scf.maxIter {n}" if n is not None else "scf.maxIter not found"]))
    return steps


def _pick(steps: list[Step], kind: str, explicit: str | None) -> Step | None:
    return pick_step(steps, kind, explicit, lambda s: (s.name, s.scfout.name, s.scfout.stem, s.scfout.parent.name))


def canonical_transforms(bases: list[SpeciesBasis]) -> list[np.ndarray]:
    per_l = {l: code_to_canonical(OPENMX_CONVENTION, l) for l in OPENMX_CONVENTION.table}
    return [orbital_transform(b, per_l) for b in bases]


def _bases(inp: OpenMXInput, sc: Scfout) -> tuple[list[SpeciesBasis], np.ndarray]:
    sps = species(inp)
    labels = [s.label for s in sps]
    atoms = atom_labels(inp)
    if len(atoms) != len(sc.norb):
        raise ParseError(inp.source, f"{len(atoms)} atoms in the input, {len(sc.norb)} in {sc.path.name}")
    try:
        kinds = np.array([labels.index(a) for a in atoms], dtype=np.int64)
    except ValueError as exc:
        raise ParseError(inp.source, f"atom of an undefined species ({exc})") from None
    bases = []
    for s in sps:
        for l in s.zetas:
            if l not in OPENMX_CONVENTION.table:
                raise BasisError(f"{s.pao}: angular momentum l={l} is not supported")
        bases.append(SpeciesBasis(s.element, shells_from_zetas(s.zetas, s.rcut_bohr * BOHR_TO_ANG), s.pao, "", FAMILY))
    norb = np.array([bases[k].norb for k in kinds])
    if not np.array_equal(norb, sc.norb):
        bad = int(np.nonzero(norb != sc.norb)[0][0])
        raise BasisError(f"{sc.path.name}: atom {bad + 1} has {sc.norb[bad]} orbitals, its PAO "
                         f"{bases[kinds[bad]].source} gives {norb[bad]}")
    return bases, kinds


def _hamiltonian(sc: Scfout, norb: np.ndarray) -> BlockSparse:
    """Hks (and iHks) as a canonical-layout BlockSparse in eV (orbital order still OpenMX's)."""
    h = sc.hks * HARTREE_TO_EV
    if sc.spin_switch == 0:
        return BlockSparse.from_coo(norb, sc.rows, sc.cols, sc.R, h[0], "none")
    if sc.spin_switch == 1:
        return BlockSparse.from_coo(norb, sc.rows, sc.cols, sc.R, h[:2].T.copy(), "collinear")
    ih = sc.ihks * HARTREE_TO_EV
    uu = h[0] + 1j * ih[0]
    dd = h[1] + 1j * ih[1]
    ud = h[2] + 1j * (h[3] + ih[2])
    n = len(sc.rows)
    z, o = np.zeros(n, int), np.ones(n, int)
    # the down-up entry of (i, j, R) is the adjoint of the up-down entry of (j, i, -R)
    return spinor_from_spin_entries(
        norb,
        np.concatenate([sc.rows, sc.rows, sc.rows, sc.cols]),
        np.concatenate([sc.cols, sc.cols, sc.cols, sc.rows]),
        np.concatenate([sc.R, sc.R, sc.R, -sc.R]),
        np.concatenate([z, o, z, o]), np.concatenate([z, o, o, z]),
        np.concatenate([uu, dd, ud, np.conj(ud)]),
    )


def _checked(m: BlockSparse, path: Path) -> BlockSparse:
    return check_hermitian(m, str(path), rtol=1e-6)


def read_run(run: str | Path, *, zeroth: str | None = None, converged: str | None = None,
             load_matrices: bool = True, **_ignored) -> System:
    """Structure, PAO basis, H(0) and/or converged H, S, k-mesh, eigenvalues of an OpenMX run."""
    run = Path(run)
    steps = find_steps(run)
    if not steps:
        raise RunDirectoryError(f"{run}: no OpenMX .scfout file (was HS.fileout on?)")
    s0, sc_ = _pick(steps, "zeroth", zeroth), _pick(steps, "converged", converged)
    used = [s for s in (s0, sc_) if s is not None]  # every step is one or the other (find_steps)
    files = {s.name: read_scfout(s.scfout) for s in used}
    first = files[used[0].name]
    inp = _input_for(used[0].scfout, first)
    bases, kinds = _bases(inp, first)
    norb = first.norb
    spin_mode = {0: "none", 1: "collinear", 3: "noncollinear"}.get(first.spin_switch)
    if spin_mode is None:
        raise ParseError(first.path, f"SpinP_switch {first.spin_switch} is not 0, 1 or 3")
    soc = (inp.get("scf.SpinOrbit.Coupling", "off") or "off").split()[0].lower() in ("on", "1", "true")
    system = System(
        lattice=first.tv_bohr * BOHR_TO_ANG,
        positions=first.gxyz_bohr * BOHR_TO_ANG,
        kinds=kinds,
        bases=bases,
        spin_mode=spin_mode,
        soc=soc,
        nelec=first.valence_electrons if first.valence_electrons > 0 else None,
        smearing=Smearing("fd", first.e_temp_k * KELVIN_TO_EV),
    )
    mesh = kgrid(inp)
    if mesh is not None:  # OpenMX's grid contains Γ for odd n and is shifted by half a step for even n
        system.kpoints = KPoints.from_mesh(mesh, tuple(0.5 if n % 2 == 0 else 0.0 for n in mesh))
    transforms = canonical_transforms(bases)
    if load_matrices:
        system.matrices["S"] = _checked(BlockSparse.from_coo(norb, first.rows, first.cols, first.R, first.olp, "none"),
                                        first.path).transform_orbitals(kinds, transforms)
    for tag, st in (("H0", s0), ("H", sc_)):
        if st is None:
            continue
        f = files[st.name]
        if not np.array_equal(f.norb, norb) or f.spin_switch != first.spin_switch:
            raise RunDirectoryError(f"{st.name} and {used[0].name} are not the same system (orbitals or spin differ)")
        if load_matrices:
            system.matrices[tag] = _checked(_hamiltonian(f, norb), f.path).transform_orbitals(kinds, transforms)
        system.fermi_ev[tag] = f.chem_p_ha * HARTREE_TO_EV
        band = st.scfout.with_suffix(".Band")
        if band.is_file():
            k, e, _mu = read_band(band)
            e = e * HARTREE_TO_EV
            system.reference_eigenvalues[tag] = (k, e if spin_mode == "collinear" else e[0])
    version = {0: "OpenMX ≤ 3.8 (scfout version 0)", 3: "OpenMX 3.9 (scfout version 3)"}[first.version]
    system.meta = {
        "code": "openmx",
        "run_dir": str(run),
        "generation": version,
        "version": "",
        "steps": [{"name": s.name, "kind": s.kind, "files": s.scfout.name, "notes": s.notes} for s in steps],
        "zeroth_step": s0.name if s0 else None,
        "converged_step": sc_.name if sc_ else None,
        "species_labels": [s.label for s in species(inp)],
    }
    out_std = run / "out.std" if run.is_dir() else None
    if out_std is not None and out_std.is_file():
        import re

        m = re.search(r"OpenMX\s+Ver\.\s*(\S+)", out_std.read_text(errors="replace"))
        if m:
            system.meta["version"] = m.group(1)
    return system
