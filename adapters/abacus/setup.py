"""Prepare the zeroth step of a user's ABACUS input set (stock ABACUS, no patch).

The zeroth step is one SCF iteration from the superposition of atomic densities
(``init_chg atomic``, ``scf_nmax 1``, ``mixing_beta 0``, ``mixing_beta_mag 0``) that writes
H(R), S(R) (``out_mat_hs2 1``). Its H(0)(R) does not depend on the k-mesh, so a 1×1×1 mesh is
written (the user's KPT is kept as ``KPT.user`` and used for Fermi levels and bands).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nextham_dft.errors import OutputExistsError, RunDirectoryError

from .inputs import read_input, read_kpt, read_stru

ZEROTH = {
    "calculation": "scf",
    "init_chg": "atomic",
    "scf_nmax": "1",
    "mixing_beta": "0",
    "mixing_beta_mag": "0",
    "out_mat_hs2": "1",
    "suffix": "nextham_h0",
}
#: ABACUS auto-sets (1,1,1) μB per atom when every moment is 0 in an nspin-4 run; this is above its 1e-5 threshold
TINY_MOMENT = 2e-5


def _abs_dir(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def zeroth_step_input(params: dict[str, str], run_dir: Path) -> dict[str, str]:
    """The user's parameters with the zeroth-step controls; relative paths made absolute."""
    out = dict(params)
    out.update(ZEROTH)
    for key in ("pseudo_dir", "orbital_dir"):
        out[key] = _abs_dir(run_dir, params.get(key)) or str(run_dir.resolve())
    for key in ("stru_file", "kpoint_file", "read_file_dir"):
        out.pop(key, None)
    return out


def write_input(path: Path, params: dict[str, str]) -> None:
    lines = ["INPUT_PARAMETERS"] + [f"{k:<20} {v}" for k, v in params.items()]
    path.write_text("\n".join(lines) + "\n")


def stru_with_tiny_moments(text: str) -> str:
    """STRU text with every species' default moment set to TINY_MOMENT (ATOMIC_POSITIONS block)."""
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip().upper().startswith("ATOMIC_POSITIONS"))
    except StopIteration:
        return text
    body = [(i, ln) for i, ln in enumerate(lines[start + 1 :], start + 1) if ln.split("//")[0].split("#")[0].strip()]
    k = 1  # skip the mode line
    while k + 2 < len(body):
        mag_i = body[k + 1][0]
        count = int(body[k + 2][1].split()[0])
        lines[mag_i] = f"{TINY_MOMENT:g}"
        k += 3 + count
    return "\n".join(lines) + "\n"


def setup_zeroth_step(run_dir: str | Path, out_dir: str | Path | None = None, keep_kpoints: bool = False) -> Path:
    """Write INPUT, STRU, KPT (and KPT.user) of the zeroth step into a new folder; returns it."""
    run_dir = Path(run_dir)
    src = run_dir / "INPUT"
    if not src.is_file():
        raise RunDirectoryError(f"{run_dir}: no INPUT (an ABACUS input set has INPUT, STRU and KPT)")
    params = read_input(src)
    stru_path = run_dir / params.get("stru_file", "STRU")
    kpt_path = run_dir / params.get("kpoint_file", "KPT")
    if not stru_path.is_file():
        raise RunDirectoryError(f"{run_dir}: no {stru_path.name}")
    stru = read_stru(stru_path, params.get("latname", "none"))  # validates
    out = Path(out_dir) if out_dir else run_dir / "nextham-zeroth"
    if out.exists():
        raise OutputExistsError(f"{out} exists: remove it or choose another --out")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        write_input(tmp / "INPUT", zeroth_step_input(params, run_dir))
        text = stru_path.read_text()
        nspin = int(params.get("nspin", "1"))
        if nspin == 4 and np.allclose(stru.magmom, 0.0):
            text = stru_with_tiny_moments(text)
        (tmp / "STRU").write_text(text)
        if kpt_path.is_file():
            read_kpt(kpt_path)  # validates
            (tmp / "KPT.user").write_text(kpt_path.read_text())
            if keep_kpoints:
                (tmp / "KPT").write_text(kpt_path.read_text())
        if not keep_kpoints:
            (tmp / "KPT").write_text("K_POINTS\n0\nGamma\n1 1 1 0 0 0\n")
        os.replace(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
