"""Write canonical matrices back into ABACUS's sparse formats (either generation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nextham_dft.core.blocks import BlockSparse
from nextham_dft.core.system import System
from nextham_dft.core.units import EV_TO_RY

from .csr import write_csr
from .run import canonical_transforms

FILE_NAMES = {
    ("old", "H"): "data-HR-sparse_SPIN{s0}.csr",
    ("old", "S"): "data-SR-sparse_SPIN0.csr",
    ("2025", "H"): "hrs{s1}_nao.csr",
    ("2025", "S"): "srs1_nao.csr",
}


def to_abacus_coo(m: BlockSparse, system: System, spinor: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full (rows, cols, distinct R, R index of each entry, values) in ABACUS's orbital order and
    signs (spinor-interleaved when asked). No per-entry (nnz, 3) R array is built."""
    back = [t.T for t in canonical_transforms(system.bases)]  # orthogonal: inverse = transpose
    mm = m.transform_orbitals(system.kinds, back)
    if spinor:
        rows, cols, _, vals = mm.to_spinor_coo(with_R=False)
        uR, ridx = mm.entry_R_index(full=True, repeat=mm.spinor_repeat)
    else:
        rows, cols, _, vals = mm.to_coo(full=True, with_R=False)
        uR, ridx = mm.entry_R_index(full=True)
    return rows, cols, uR, ridx, vals


def write_matrix(path: str | Path, m: BlockSparse, system: System, generation: str, quantity: str,
                 spin_index: int = 0) -> None:
    """Write H (eV → Ry) or S into ``path`` in an ABACUS csr generation."""
    spinor = system.spin_mode == "noncollinear"
    mm = m
    if m.spin == "collinear":
        mm = m.with_data(m.data[:, spin_index], "none")
    rows, cols, uR, ridx, vals = to_abacus_coo(mm, system, spinor)
    if quantity == "H":
        vals = vals * EV_TO_RY
    dim = system.dim
    write_csr(path, generation, dim, uR, rows, cols, ridx, vals, quantity=quantity,
              complex_values=spinor, spin_index=spin_index + 1, n_spin=2 if system.spin_mode == "collinear" else 1)


#: S(R)'s name in ABACUS develop from 2026-07 (2025 format): spin-independent, so no spin index
S_NAME_2026 = "sr_nao.csr"


def write_hs(directory: str | Path, system: System, source: str, generation: str,
             s_name: str | None = None, h_names: list[str] | None = None) -> list[Path]:
    """H (from matrix ``source``) and S files in ``directory`` with the generation's file names, or
    with the names a run used (``h_names`` per spin, ``s_name``: e.g. ABACUS 3.10 LTS's hrs1_nao.csr
    under the old header, or ``S_NAME_2026``)."""
    directory = Path(directory)
    out = []
    h = system.matrices[source]
    n_files = 2 if h.spin == "collinear" else 1
    if h_names is not None and len(h_names) != n_files:
        raise ValueError(f"{n_files} H file name(s) needed, got {h_names}")
    for s in range(n_files):
        p = directory / (h_names[s] if h_names else FILE_NAMES[(generation, "H")].format(s0=s, s1=s + 1))
        write_matrix(p, h, system, generation, "H", s)
        out.append(p)
    p = directory / (s_name or FILE_NAMES[(generation, "S")])
    write_matrix(p, system.matrices["S"], system, generation, "S")
    out.append(p)
    return out
