"""Read an ABACUS run directory into a canonical :class:`~nextham_dft.core.system.System`.

A run directory holds INPUT (or INPUT.<suffix>), STRU, KPT and one OUT.<suffix>/
folder per calculation. Each OUT folder with sparse matrices is a *step*; the
zeroth step (one SCF iteration from atomic densities: ``scf_nmax 1``) and a
converged SCF are recognised from their parameters and log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextham_dft.core.basis import RadialFunction, SpeciesBasis, file_sha256, orbital_transform
from nextham_dft.core.blocks import BlockSparse, check_hermitian, spinor_from_spin_entries, unique_rows
from nextham_dft.core.kspace import Smearing
from nextham_dft.core.sph import code_to_canonical
from nextham_dft.core.system import KPoints, System
from nextham_dft.core.units import BOHR_TO_ANG, KELVIN_TO_EV, RY_TO_EV
from nextham_dft.errors import BasisError, ParseError, RunDirectoryError

from .convention import ABACUS_CONVENTION
from .csr import CsrFile, read_csr
from .inputs import abacus_positions, OrbFile, read_input, read_kpt, read_orb, read_stru, read_upf_density, read_upf_valence
from .npz import read_npz
from .outputs import LogFacts, read_eig_occ, read_istate, read_kpoints, read_log
from .textio import find, logical_name

#: Matrix file names per generation, H then S; {s} is the spin index. ABACUS develop from 2026-07
#: (deepmodeling/abacus-develop#7707) names the spin-independent S(R) ``sr_nao.csr``.
#: The NPZ archives (``out_hr_npz``/``out_hsr_npz``, ``out_hsr 3``) come after the text files.
H_NAMES = ("data-HR-sparse_SPIN{s0}.csr", "hrs{s1}_nao.csr", "hrs{s1}_nao.npz", "output_HR{s0}.npz")
S_NAMES = ("data-SR-sparse_SPIN0.csr", "srs1_nao.csr", "sr_nao.csr", "sr_nao.npz", "output_SR.npz")
_REF = (".ref",)  # ABACUS's integration tests store reference outputs as *.ref


@dataclass
class Step:
    """One ABACUS calculation found in a run directory."""

    name: str
    directory: Path
    params: dict[str, str]
    h_files: list[Path]
    s_file: Path | None
    log: LogFacts | None = None
    kind: str = "unknown"  # zeroth | converged | unconverged | nscf | unknown
    file_names: str = ""
    notes: list[str] = field(default_factory=list)


def _find_any(directory: Path, names: list[str]) -> Path | None:
    for n in names:
        for cand in (n, n + ".ref"):
            p = find(directory, cand)
            if p is not None:
                return p
    return None


def _h_files(directory: Path, nspin: int) -> list[Path]:
    out = []
    for s in range(2 if nspin == 2 else 1):
        p = _find_any(directory, [n.format(s0=s, s1=s + 1) for n in H_NAMES])
        if p is not None:
            out.append(p)
    return out


def matrix_files(directory: Path) -> list[Path]:
    """The sparse-matrix files of any generation in ``directory``: H of either spin, then S (the first
    name found of each, as the steps are read)."""
    s = _find_any(directory, list(S_NAMES))
    return _h_files(directory, 2) + ([s] if s is not None else [])


def _step_params(run_dir: Path, out_dir: Path, suffix: str) -> tuple[dict[str, str], str]:
    """Parameters of a step: OUT.<suffix>/INPUT dump, INPUT.<suffix>, or INPUT with that suffix."""
    dump = find(out_dir, "INPUT")
    if dump is not None:
        return read_input(dump), str(dump)
    for cand in (run_dir / f"INPUT.{suffix}", run_dir / f"INPUT_{suffix}"):
        if cand.is_file():
            return read_input(cand), str(cand)
    top = run_dir / "INPUT"
    if top.is_file():
        p = read_input(top)
        if p.get("suffix", "ABACUS") == suffix or out_dir == run_dir:
            return p, str(top)
    for name in ("running_scf.log", "running_nscf.log", "running_relax.log"):
        logp = find(out_dir, name)
        if logp is not None:
            return params_from_log(logp), str(logp)
    return {}, ""


def params_from_log(path: Path) -> dict[str, str]:
    """The ``key = value`` parameters echoed at the top of a running log (fallback when no INPUT is left)."""
    from .textio import read_text

    text = read_text(path)
    head = text.split("LCAO ALGORITHM", 1)[0]
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s*([a-z][a-z0-9_]*)\s*=\s*(\S+)\s*$", head, re.M):
        out.setdefault(m.group(1), m.group(2))
    if "calculation" not in out and "running_nscf" in path.name:
        out["calculation"] = "nscf"
    return out


def _classify(step: Step) -> str:
    p = step.params
    calc = p.get("calculation", "scf").lower()
    if calc == "nscf":
        return "nscf"
    nmax = None
    if "scf_nmax" in p:
        try:
            nmax = int(float(p["scf_nmax"]))
        except ValueError:
            nmax = None
    log = step.log
    if nmax == 1 or (nmax is None and log is not None and log.iterations == 1 and not log.converged):
        beta = p.get("mixing_beta")
        if p.get("init_chg", "atomic").lower() not in ("atomic", "auto"):
            step.notes.append(f"init_chg {p.get('init_chg')}: not started from atomic densities")
            return "unknown"
        if beta is not None and float(beta) != 0.0:
            step.notes.append("mixing_beta ≠ 0 (H(0) is still the written one: it does not depend on mixing)")
        return "zeroth"
    if log is not None:
        return "converged" if log.converged else "unconverged"
    if nmax is not None and nmax > 1:
        return "converged"
    return "unknown"


def find_steps(run_dir: str | Path) -> list[Step]:
    """All calculations with sparse matrices in a run directory (OUT.* folders, or the folder itself)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: not a directory")
    cands = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("OUT."))
    steps: list[Step] = []
    for d in [run_dir] + cands:
        suffix = d.name[4:] if d != run_dir else "."
        params, _src = _step_params(run_dir, d, suffix)
        nspin = int(params.get("nspin", "1") or 1)
        hs = _h_files(d, nspin)
        s = _find_any(d, list(S_NAMES))
        if not hs and s is None:
            continue
        logp = None
        for name in ("running_scf.log", "running_nscf.log", "running_relax.log"):
            logp = find(d, name)
            if logp is not None:
                break
        log = read_log(logp) if logp is not None else None
        st = Step(d.name if d != run_dir else ".", d, params, hs, s, log)
        st.kind = _classify(st)
        st.file_names = ", ".join(p.name for p in hs + ([s] if s else []))
        steps.append(st)
    return steps


def select_steps(steps: list[Step], zeroth: str | None = None, converged: str | None = None) -> tuple[Step | None, Step | None]:
    """The zeroth and converged steps; explicit names override; ambiguity is an error."""

    def pick(kind: str, explicit: str | None) -> Step | None:
        if explicit:
            for s in steps:
                if s.name in (explicit, f"OUT.{explicit}"):
                    return s
            raise RunDirectoryError(f"no step {explicit!r}; found: {', '.join(s.name for s in steps) or 'none'}")
        found = [s for s in steps if s.kind == kind]
        if len(found) > 1:
            raise RunDirectoryError(
                f"several {kind} steps ({', '.join(s.name for s in found)}): choose one with --{'zeroth' if kind == 'zeroth' else 'converged'}"
            )
        return found[0] if found else None

    return pick("zeroth", zeroth), pick("converged", converged)


# ---------------------------------------------------------------------------- basis


def _resolve(run_dir: Path, sub: str | None, name: str) -> list[Path]:
    out = []
    if sub:
        base = Path(sub)
        if not base.is_absolute():
            base = run_dir / base
        out.append(base / name)
    out.append(run_dir / name)
    return out


def read_basis(run_dir: Path, stru, params: dict[str, str], orbital_dir: str | Path | None = None) -> tuple[list[SpeciesBasis], list[OrbFile]]:
    """Per-species NAO basis from the .orb files named in STRU."""
    bases, orbs = [], []
    for sp in stru.species:
        if not sp.orbital:
            raise BasisError(f"species {sp.label}: no orbital file in STRU (NUMERICAL_ORBITAL)")
        tried = _resolve(run_dir, params.get("orbital_dir"), sp.orbital)
        if orbital_dir:  # given by the user (--orbital-dir): relative to the working directory, searched first
            tried = [Path(orbital_dir).absolute() / sp.orbital] + tried
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise BasisError(f"orbital file {sp.orbital} of {sp.label} not found (looked in {', '.join(str(p.parent) for p in tried)})")
        orb = read_orb(path)
        r = np.arange(max((len(v) for v in orb.radials.values()), default=0)) * orb.dr_bohr * BOHR_TO_ANG
        shells = tuple(
            RadialFunction(l, z, orb.rcut_bohr * BOHR_TO_ANG, r, orb.radials.get((l, z), np.zeros(0)) * BOHR_TO_ANG**-1.5)
            for l in sorted(orb.zetas)
            for z in range(orb.zetas[l])
        )
        for s in shells:
            if s.l not in ABACUS_CONVENTION.table:
                raise BasisError(f"{path.name}: angular momentum l={s.l} is not supported")
        bases.append(SpeciesBasis(orb.element, shells, path.name, file_sha256(path.read_bytes()), "abacus-nao"))
        orbs.append(orb)
    return bases, orbs


def _nelec(run_dir: Path, stru, params: dict[str, str], kinds: np.ndarray, logs: list[LogFacts],
           densities: list | None = None) -> float | None:
    """INPUT's nelec, else the pseudopotentials' valence charges (from ``densities`` when they were read,
    one per species), else the log's count."""
    if "nelec" in params and float(params["nelec"]) > 0:
        return float(params["nelec"])
    if densities:
        return float(sum(densities[k].z_valence for k in kinds))
    try:
        zs = []
        for sp in stru.species:
            tried = _resolve(run_dir, params.get("pseudo_dir"), sp.pseudo)
            path = next((p for p in tried if p.is_file()), None)
            if path is None:
                raise FileNotFoundError(sp.pseudo)
            zs.append(read_upf_valence(path))
        return float(sum(zs[k] for k in kinds))
    except (FileNotFoundError, ParseError):
        for lg in logs:
            if lg is not None and lg.nelec is not None:
                return lg.nelec
    return None


def read_atomic_densities(run_dir: Path, stru, params: dict[str, str]) -> tuple[list, str]:
    """The UPF files' atomic and core densities, one per species, and '' — or ([], why not) when a file
    is missing or unreadable (only the self-consistent completion needs them)."""
    out = []
    for sp in stru.species:
        tried = _resolve(run_dir, params.get("pseudo_dir"), sp.pseudo) if sp.pseudo else []
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            return [], f"{sp.label}: pseudopotential file {sp.pseudo or '(none named in STRU)'} not found"
        try:
            out.append(read_upf_density(path))
        except ParseError as exc:
            return [], str(exc)
    return out, ""


def _smearing(params: dict[str, str]) -> Smearing:
    method = params.get("smearing_method", "gauss").lower()
    method = {"gauss": "gaussian", "gaussian": "gaussian", "fd": "fd", "fermi-dirac": "fd", "mp": "mp", "mp2": "mp2",
              "mv": "mv", "cold": "mv", "marzari-vanderbilt": "mv", "fixed": "fixed"}.get(method, "gaussian")
    if "smearing_sigma_temp" in params:
        sigma = float(params["smearing_sigma_temp"]) * KELVIN_TO_EV
    else:
        sigma = float(params.get("smearing_sigma", "0.015")) * RY_TO_EV
    return Smearing(method, sigma)


# ---------------------------------------------------------------------------- matrices


def canonical_transforms(bases: list[SpeciesBasis]) -> list[np.ndarray]:
    """Per-kind orthogonal matrices taking ABACUS orbital order/signs to the canonical ones."""
    per_l = {l: code_to_canonical(ABACUS_CONVENTION, l) for l in ABACUS_CONVENTION.table}
    return [orbital_transform(b, per_l) for b in bases]


def csr_to_blocks(
    files: list[CsrFile], norb: np.ndarray, kinds: np.ndarray, transforms: list[np.ndarray], scale: float, overlap: bool
) -> BlockSparse:
    """ABACUS sparse files (one, or two for nspin 2) → canonical BlockSparse (scaled by ``scale``).

    A matrix whose two halves disagree (M(-R) ≠ M(R)^†) beyond print precision is
    an inconsistent file and raises ParseError.
    """
    return check_hermitian(_csr_to_blocks(files, norb, kinds, transforms, scale, overlap), files[0].path)


def _csr_to_blocks(
    files: list[CsrFile], norb: np.ndarray, kinds: np.ndarray, transforms: list[np.ndarray], scale: float, overlap: bool
) -> BlockSparse:
    n = int(norb.sum())
    f0 = files[0]
    if len(files) == 2:  # collinear up/down
        a, b = files
        for f in files:
            if f.dim != n:
                raise BasisError(f"{f.path}: matrix dimension {f.dim} ≠ {n} orbitals of the basis")
        key_a = np.stack([a.R[a.Ridx].T[0], a.R[a.Ridx].T[1], a.R[a.Ridx].T[2], a.rows, a.cols], 1)
        key_b = np.stack([b.R[b.Ridx].T[0], b.R[b.Ridx].T[1], b.R[b.Ridx].T[2], b.rows, b.cols], 1)
        keys, inv = unique_rows(np.concatenate([key_a, key_b]))
        vals = np.zeros((len(keys), 2))
        vals[inv[: len(key_a)], 0] = a.values.real
        vals[inv[len(key_a) :], 1] = b.values.real
        m = BlockSparse.from_coo(norb, keys[:, 3], keys[:, 4], keys[:, :3], vals * scale, "collinear")
        return m.transform_orbitals(kinds, transforms)
    if f0.dim == n:
        if f0.is_complex and np.max(np.abs(f0.values.imag), initial=0) > 1e-8:
            raise ParseError(f0.path, "complex values in a spin-unpolarised matrix")
        m = BlockSparse.from_coo(norb, f0.rows, f0.cols, f0.R[f0.Ridx], f0.values.real * scale, "none")
        return m.transform_orbitals(kinds, transforms)
    if f0.dim != 2 * n:
        raise BasisError(f"{f0.path}: matrix dimension {f0.dim} matches neither {n} orbitals nor {2 * n} spinors of the basis")
    # spinor-interleaved rows/columns 2μ + s
    m = spinor_from_spin_entries(norb, f0.rows // 2, f0.cols // 2, f0.R[f0.Ridx], f0.rows % 2, f0.cols % 2,
                                 f0.values * scale)
    if overlap:
        v = m.data
        off = np.max(np.abs(v[:, 0, 1]), initial=0) + np.max(np.abs(v[:, 1, 0]), initial=0)
        diff = np.max(np.abs(v[:, 0, 0] - v[:, 1, 1]), initial=0)
        if off > 1e-6 or diff > 1e-6 or np.max(np.abs(v[:, 0, 0].imag), initial=0) > 1e-6:
            raise ParseError(f0.path, "spinor overlap is not S ⊗ 1")
        herm = m.hermiticity_error
        m = m.with_data(v[:, 0, 0].real.copy(), "none")
        m.hermiticity_error = herm
    return m.transform_orbitals(kinds, transforms)


# ---------------------------------------------------------------------------- run


def _flag(params: dict[str, str], key: str) -> bool:
    """An INPUT boolean (ABACUS writes 1/0 or true/false)."""
    return params.get(key, "0").lower() in ("1", "true", "t")


def read_matrix_file(path: Path) -> CsrFile:
    """A sparse-matrix file of any generation: text CSR, or an NPZ archive (``*.npz``)."""
    return read_npz(path) if _plain_name(path).endswith(".npz") else read_csr(path)


def _plain_name(path: Path) -> str:
    """A matrix file's name without its compression suffix and ABACUS's test-reference ``.ref``."""
    return logical_name(path).removesuffix(".ref")


def _version_generation(step: Step, csr: CsrFile | None) -> str:
    gen = csr.generation if csr is not None else "?"
    names = step.file_names
    if gen == "npz":
        return f"ABACUS NPZ matrices ({step.file_names})"
    if step.s_file is not None and _plain_name(step.s_file) == "sr_nao.csr":
        return "ABACUS develop ≥ 2026-07 (hrs*_nao.csr, sr_nao.csr)"
    if gen == "2025":
        return "ABACUS ≥ 3.11 (hrs/srs *_nao.csr, 2025 header)"
    if "nao.csr" in names:
        return "ABACUS 3.10.x (hrs/srs *_nao.csr, old header)"
    return "ABACUS ≤ 3.10 (data-HR/SR-sparse_SPIN*.csr)"


def read_run(
    run_dir: str | Path,
    *,
    zeroth: str | None = None,
    converged: str | None = None,
    orbital_dir: str | Path | None = None,
    load_matrices: bool = True,
    matrices: tuple[str, ...] = ("H0", "H", "S"),
) -> System:
    """Read an ABACUS run directory: structure, basis, H(0), converged H, S, k-points, eigenvalues.

    ``matrices`` limits which matrices are read (prediction needs only H0 and S).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: not a directory")
    steps = find_steps(run_dir)
    if not steps:
        raise RunDirectoryError(f"{run_dir}: no ABACUS sparse matrices found (no OUT.*/data-HR-sparse_SPIN0.csr or hrs1_nao.csr; was out_mat_hs2 1 set?)")
    s0, sc = select_steps(steps, zeroth, converged)
    used = [s for s in (s0, sc) if s is not None] or steps[:1]
    for s in used:
        if _flag(s.params, "gamma_only"):
            raise RunDirectoryError(f"{s.directory}: gamma_only 1: ABACUS writes its H(R) and S(R) folded onto "
                                    "R = 0 (the matrices at Γ), not per R; rerun this step without gamma_only "
                                    "(a 1x1x1 KPT; `nextham-dft setup` writes one)")
    params: dict[str, str] = {}
    for s in reversed(used):
        params.update(s.params)
    if not params:
        top = run_dir / "INPUT"
        params = read_input(top) if top.is_file() else {}
    stru_name = params.get("stru_file", "STRU")
    stru_path = run_dir / stru_name
    if not stru_path.is_file():
        raise RunDirectoryError(f"{run_dir}: no {stru_name} (an ABACUS run needs its structure file)")
    stru = read_stru(stru_path, params.get("latname", "none"))
    labels = [sp.label for sp in stru.species]
    kinds = np.array([labels.index(l) for l in stru.labels], dtype=np.int64)
    bases, _orbs = read_basis(run_dir, stru, params, orbital_dir)
    # species labels may be arbitrary (Fe1, Fe_up): the orbital file's element is authoritative
    norb = np.array([bases[k].norb for k in kinds], dtype=np.int64)
    nspin = int(params.get("nspin", "1") or 1)
    spin_mode = {1: "none", 2: "collinear", 4: "noncollinear"}.get(nspin)
    if spin_mode is None:
        raise ParseError(run_dir / "INPUT", f"nspin {nspin} is not 1, 2 or 4")
    soc = _flag(params, "lspinorb")
    logs = [s.log for s in used if s.log is not None]
    densities, densities_missing = read_atomic_densities(run_dir, stru, params)
    system = System(
        lattice=stru.lattice,
        positions=abacus_positions(stru),
        kinds=kinds,
        bases=bases,
        spin_mode=spin_mode,
        soc=soc,
        nelec=_nelec(run_dir, stru, params, kinds, logs, densities),
        smearing=_smearing(params),
        magmom=stru.magmom,
    )
    system.atomic_densities = densities
    # k-points of the run
    kpt_path = run_dir / params.get("kpoint_file", "KPT")
    if (run_dir / "KPT.user").is_file():  # written by `nextham-dft setup`: the user's own mesh
        kpt_path = run_dir / "KPT.user"
    if kpt_path.is_file():
        kpt = read_kpt(kpt_path)
        if kpt.kind == "mesh":
            system.kpoints = KPoints.from_mesh(kpt.mesh, kpt.shift)
    for s in used if not (run_dir / "KPT.user").is_file() else []:
        kp = find(s.directory, "kpoints")
        if kp is not None:
            k, w = read_kpoints(kp)
            mesh = system.kpoints.mesh if system.kpoints is not None else None
            system.kpoints = KPoints(k, w, mesh)
            break
    transforms = canonical_transforms(bases)
    gen_csr = None
    s_name = None
    if load_matrices:
        s_step = next((s for s in used if s.s_file is not None), None) or next((s for s in steps if s.s_file), None)
        if s_step is not None:
            s_name = _plain_name(s_step.s_file)
            c = read_matrix_file(s_step.s_file)
            gen_csr = c
            system.matrices["S"] = csr_to_blocks([c], norb, kinds, transforms, 1.0, overlap=True)
        for tag, st in (("H0", s0), ("H", sc)):
            if st is None or not st.h_files or tag not in matrices:
                continue
            cs = [read_matrix_file(p) for p in st.h_files]
            gen_csr = cs[0]
            system.matrices[tag] = csr_to_blocks(cs, norb, kinds, transforms, RY_TO_EV, overlap=False)
    for tag, st in (("H0", s0), ("H", sc)):
        if st is None:
            continue
        kp = find(st.directory, "kpoints")
        ist = find(st.directory, "istate.info")
        eo = find(st.directory, "eig_occ.txt")
        if kp is not None and (ist is not None or eo is not None):
            k, _w = read_kpoints(kp)
            e = read_istate(ist) if ist is not None else read_eig_occ(eo)
            system.reference_eigenvalues[tag] = (k, e)
        if st.log is not None and st.log.efermi_ev is not None:
            system.fermi_ev[tag] = st.log.efermi_ev
    first = used[0]
    system.meta = {
        "code": "abacus",
        "run_dir": str(run_dir),
        "generation": _version_generation(first, gen_csr),
        "csr_generation": gen_csr.generation if gen_csr is not None else None,
        "s_file_name": s_name,
        "h_file_names": [_plain_name(p) for p in s0.h_files] if s0 is not None and s0.h_files else None,
        "version": next((lg.version for lg in logs if lg.version), ""),
        "steps": [
            {"name": s.name, "kind": s.kind, "files": s.file_names, "notes": s.notes} for s in steps
        ],
        "zeroth_step": s0.name if s0 else None,
        "converged_step": sc.name if sc else None,
        "species_labels": labels,
    }
    if densities_missing:
        system.meta["atomic_densities_missing"] = densities_missing
    return system
