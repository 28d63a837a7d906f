"""A SIESTA density matrix (``LABEL.DM``) from a Hamiltonian, to start an SCF with ``DM.UseSaveDM true``.

The DM is computed on the run's full Monkhorst–Pack mesh with its occupation function and electron
count (:func:`nextham_dft.core.density.density_matrix`), converted back to SIESTA's orbital order
and signs, placed on the sparsity pattern SIESTA itself wrote (read again through sisl) and written
by sisl. Every spin mode: unpolarized, polarized, non-collinear and spin–orbit (SIESTA's spin box is
ours with the spin indices swapped, as its own SOC .DM files show).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nextham_dft.core.system import System

from .run import _basis_of, _pick, _read_matrix, canonical_transforms, find_steps


def siesta_dm(system: System, source: str):
    """(sisl DensityMatrix in SIESTA's conventions, E_F eV) of Hamiltonian ``source`` of a SIESTA run."""
    system.require_nelec("no SIESTA output with 'Total number of electrons'")
    return system.density_matrix(source)


def write_dm(directory: str | Path, run_dir: str | Path, system: System, source: str) -> dict[str, object]:
    """Write ``LABEL.DM`` of Hamiltonian ``source`` into ``directory``; returns a summary."""
    import sisl

    run_dir = Path(run_dir)
    dm, ef = siesta_dm(system, source)
    steps = find_steps(run_dir)
    st = _pick(steps, "converged", None) or _pick(steps, "zeroth", None) or steps[0]
    H = _read_matrix(st.matrix)
    g = H.geometry
    # canonical → SIESTA: harmonics back, then shells back to SIESTA's order
    back = [t.T for t in canonical_transforms(system.bases)]
    d = dm.transform_orbitals(system.kinds, back)
    perms = [_basis_of(atom, st.directory)[1] for atom in g.atoms.atom]
    norb = d.norb
    aoff = np.concatenate([[0], np.cumsum(norb)])
    perm = np.concatenate([aoff[a] + perms[k] for a, k in enumerate(system.kinds)])
    rows, cols, R, vals = d.to_coo(full=True)
    rows, cols = perm[rows], perm[cols]
    if d.spin == "collinear":
        comps = [vals[:, 0], vals[:, 1]]
    elif d.spin == "spinor":
        # SIESTA's spin box is ours with the spin indices swapped (checked against SIESTA's own SOC .DM):
        # its ↑↓ element is our ↓↑ one
        uu, ud, du, dd = vals[:, 0, 0], vals[:, 1, 0], vals[:, 0, 1], vals[:, 1, 1]
        if H.spin.is_spinorbit:
            comps = [uu.real, dd.real, ud.real, ud.imag, uu.imag, dd.imag, du.real, du.imag]
        else:
            comps = [uu.real, dd.real, ud.real, ud.imag]
    else:
        comps = [vals]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        isc = np.array([g.sc_index(r) for r in R]) if len(R) else np.zeros(0, int)
        colsc = cols + isc * g.no
        from scipy.sparse import csr_matrix

        mats = [csr_matrix((np.asarray(v, dtype=float), (rows, colsc)), shape=(g.no, g.no_s)) for v in comps]
        dmat = mats[0] + (mats[1] if len(mats) > 1 else 0)
        Ssp = H.tocsr(H.S_idx)
        out = sisl.DensityMatrix.fromsp(g, mats, S=Ssp)
        path = Path(directory) / f"{st.label}.DM"
        out.write(str(path))
    return {"file": path.name, "fermi_ev": ef, "entries": int(dmat.nnz),
            "electrons": float((dmat.multiply(Ssp)).sum())}
