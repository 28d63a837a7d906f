"""Hand a Hamiltonian back to ABACUS as the start of an SCF: density cube, H(R), DM(R), INPUTs.

Writes, into one folder (the caller makes it atomically):

* ``SPIN1_CHG.cube`` (nspin 1; nspin 2: ``SPIN1``/``SPIN2`` = up/down; nspin 4: ``SPIN1``–``SPIN4`` =
  charge, m_x, m_y, m_z) on ABACUS's
  FFT grid, read with ``init_chg file`` — every ABACUS version;
* ``hrs1_nao.csr`` (the H(R) in the 2025 format, read with ``init_chg hr``, ABACUS ≥ 3.11);
* ``dmrs1_nao.csr`` (the density matrix, ``init_chg dm``, nspin 1; nspin 2 also ``dmrs2``);
* ``INPUT`` (charge-density start), ``INPUT.init_chg_hr``, ``INPUT.init_chg_dm``, with ``STRU`` and
  ``KPT`` (the user's mesh) beside them, pseudopotential and orbital folders as absolute paths.

The density matrix comes from H on the run's full k-mesh with its smearing and electron count
(:func:`nextham_dft.core.density.density_matrix`), the density from the NAO radial tables
(:func:`nextham_dft.core.density.density_on_grid`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from nextham_dft.core.density import density_on_grid
from nextham_dft.core.system import System
from nextham_dft.core.units import ANG_TO_BOHR, EV_TO_RY
from nextham_dft.errors import RunDirectoryError

from .cube import read_cube, write_cube
from .run import find_steps
from .setup import write_input
from .textio import find
from .writers import write_matrix

CUBE_COMMENT = "STEP: 0  Cubefile created from nextham-dft (ABACUS layout). Inner loop is z, followed by y and x"


def _smooth(n: int) -> int:
    """Smallest m ≥ n whose prime factors are 2, 3 and 5 (FFT-friendly, as ABACUS chooses)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_grid(lattice: np.ndarray, params: dict[str, str]) -> tuple[int, int, int]:
    """ABACUS's density FFT grid: n_i ≥ 2·sqrt(ecutrho)·|a_i|/2π (Ry, Bohr), rounded up to 2,3,5-smooth."""
    if all(k in params for k in ("nx", "ny", "nz")):
        return tuple(int(params[k]) for k in ("nx", "ny", "nz"))  # type: ignore[return-value]
    ecutwfc = float(params.get("ecutwfc", 50))
    ecutrho = float(params.get("ecutrho", 4 * ecutwfc))
    a = np.linalg.norm(np.asarray(lattice), axis=1) * ANG_TO_BOHR
    return tuple(_smooth(int(np.ceil(2 * np.sqrt(ecutrho) * x / (2 * np.pi) - 1e-9))) for x in a)  # type: ignore[return-value]


def _run_params(run_dir: Path) -> dict[str, str]:
    """The INPUT parameters of the run's converged step (else its zeroth step, else its first)."""
    steps = find_steps(run_dir)
    chosen = [s for s in steps if s.kind == "converged"] or [s for s in steps if s.kind == "zeroth"] or steps
    if not chosen:
        raise RunDirectoryError(f"{run_dir}: no ABACUS step found")
    return dict(chosen[0].params)


def grid_for(system: System, run_dir: Path, params: dict[str, str]) -> tuple[tuple[int, int, int], str]:
    """The FFT grid: from a cube the run already wrote, else from INPUT's cutoffs."""
    for d in [run_dir] + sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("OUT.")):
        c = find(d, "SPIN1_CHG.cube")
        if c is not None:
            return read_cube(c).shape, f"from {c.name} of {d.name}"
    return fft_grid(system.lattice, params), "from INPUT's cutoffs (ABACUS's rule)"


def _restart_inputs(params: dict[str, str], run_dir: Path) -> dict[str, str]:
    p = dict(params)
    for k in ("pseudo_dir", "orbital_dir"):
        v = p.get(k)
        base = Path(v) if v else Path(".")
        p[k] = str((run_dir / base).resolve()) if not base.is_absolute() else str(base)
    if p.get("scf_nmax", "100") == "1":  # a zeroth-step INPUT: back to a normal SCF
        p["scf_nmax"] = "100"
        for k in ("mixing_beta", "mixing_beta_mag"):
            if p.get(k) in ("0", "0.0"):
                p.pop(k)
    p["calculation"] = "scf"
    p["suffix"] = "nextham-restart"
    p["read_file_dir"] = "./"
    p["stru_file"] = "STRU"
    p["kpoint_file"] = "KPT"
    return p


def _valences(run_dir: Path, params: dict[str, str], system: System) -> np.ndarray:
    """Per-atom valence charge (cube atom lines), from the UPF files; 0 where unreadable."""
    from .inputs import read_stru, read_upf_valence
    from .run import _resolve

    try:
        stru = read_stru(run_dir / params.get("stru_file", "STRU"), params.get("latname", "none"))
        z = {}
        for sp in stru.species:
            path = next((p for p in _resolve(run_dir, params.get("pseudo_dir"), sp.pseudo) if p.is_file()), None)
            z[sp.label] = read_upf_valence(path) if path is not None else 0.0
        return np.array([z.get(lab, 0.0) for lab in stru.labels])
    except Exception:  # noqa: BLE001 - informative column only
        return np.zeros(system.n_atoms)


def write_restart(directory: str | Path, run_dir: str | Path, system: System, source: str) -> dict[str, object]:
    """Write every ABACUS starting file of Hamiltonian ``source`` into ``directory``; returns a summary."""
    directory, run_dir = Path(directory), Path(run_dir)
    system.require_nelec("no pseudopotential or log; the density matrix needs it")
    h = system.hamiltonian(source)
    params = _run_params(run_dir)
    dm, ef = system.density_matrix(source)
    shape, grid_src = grid_for(system, run_dir, params)
    rho = density_on_grid(system, dm, shape)
    from pymatgen.core.periodic_table import Element

    numbers = [Element(e).Z for e in system.elements]
    zval = _valences(run_dir, params, system)
    nspin = {"spinor": 4, "collinear": 2}.get(h.spin, 1)
    comment = (CUBE_COMMENT, f"{nspin} (nspin) {ef * EV_TO_RY:.6f} (fermi energy, in Ry)")
    comps = rho if nspin > 1 else rho[None]
    for k, comp in enumerate(comps):
        write_cube(directory / f"SPIN{k + 1}_CHG.cube", comp, system.lattice, numbers, zval, system.positions, comment)
    # H(R) for init_chg hr (2025 format; nspin 2: hrs1, hrs2), DM(R) for init_chg dm (nspin 1 and 2)
    for c in range(2 if nspin == 2 else 1):
        write_matrix(directory / f"hrs{c + 1}_nao.csr", h, system, "2025", "H", c)
    if nspin in (1, 2):
        for c in range(nspin):
            write_matrix(directory / f"dmrs{c + 1}_nao.csr", dm, system, "2025", "DM", c)
    p = _restart_inputs(params, run_dir)
    write_input(directory / "INPUT", {**p, "init_chg": "file"})
    write_input(directory / "INPUT.init_chg_hr", {**p, "init_chg": "hr"})
    if nspin in (1, 2):
        write_input(directory / "INPUT.init_chg_dm", {**p, "init_chg": "dm"})
    shutil.copy(run_dir / params.get("stru_file", "STRU"), directory / "STRU")
    kpt = run_dir / "KPT.user" if (run_dir / "KPT.user").is_file() else run_dir / params.get("kpoint_file", "KPT")
    if kpt.is_file():
        shutil.copy(kpt, directory / "KPT")
    vol = abs(np.linalg.det(system.lattice))
    charge = float((comps[:2].sum(0) if nspin == 2 else comps[0]).sum() * vol / comps[0].size)
    return {"fermi_ev": ef, "grid": list(shape), "grid_source": grid_src, "electrons_on_grid": charge,
            "nelec": system.nelec, "files": sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))}
