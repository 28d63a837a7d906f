"""Do the components of a model's error along S(k)'s near-null directions make its band errors?

Filter g(S) E g(S) with g(s) = s² / (s² + s0²) on a Γ-centred k-mesh that holds every stored R
without aliasing, Fourier-transformed back onto the stored blocks. Printed per structure: the shifted
band MAE (meV) and ghost states of
- H_DFT + E and H_DFT + g(S) E g(S), E the model's error (its near-null part removed or not);
- H(0) + g(S) ΔH_true g(S), the same filter on the true correction (what the filter itself costs).

Usage: python scripts/diagnostics/near_null_filter.py DATA.h5 [--model PATH] [--split val] [--s0 0.01]
"""

from __future__ import annotations

import numpy as np

from diag_common import split_parser, spin_free, split_systems, with_spin_free
from nextham_dft.core.blocks import BlockSparse
from nextham_dft.core.kspace import KAssembler
from nextham_dft.evaluation import evaluate


def filter_near_null(m: BlockSparse, s: BlockSparse, s0: float, chunk: int = 32) -> np.ndarray:
    """Entries (nnz,) of g(S) M g(S) on m's stored blocks, g(s) = s² / (s² + s0²); m, s spin-free."""
    rmax = np.abs(np.concatenate([m.R, s.R])).max(axis=0)
    n = 2 * rmax + 1  # every R in [−rmax, rmax] its own point of the mesh's reciprocal lattice
    kf = np.stack(np.meshgrid(*[np.arange(x) for x in n], indexing="ij"), -1).reshape(-1, 3) / n
    am, asm = KAssembler(m), KAssembler(s)
    edge, lr, lc = m.entry_index()
    rows = m.atom_offsets[m.edge_i[edge]] + lr
    cols = m.atom_offsets[m.edge_j[edge]] + lc
    r_entry = m.R[edge]
    out = np.zeros(len(rows), dtype=complex)
    for c in range(0, len(kf), chunk):
        k = kf[c : c + chunk]
        w, v = np.linalg.eigh(asm(k))
        g = np.einsum("kij,kj,klj->kil", v, w**2 / (w**2 + s0**2), v.conj())
        filtered = g @ am(k) @ g
        out += (filtered[:, rows, cols] * np.exp(-2j * np.pi * (k @ r_entry.T))).sum(0)
    return (out / len(kf)).real


def main() -> None:
    ap = split_parser(__doc__)
    ap.add_argument("--s0", type=float, default=0.01, help="S eigenvalue below which components are damped")
    a = ap.parse_args()
    print(f"{'id':6s} {'formula':9s} | shifted band MAE (meV), ghost states: H+E | H+gEg | H(0)+g dH g")
    for system, hp in split_systems(a.model, a.data, a.split):
        h0, s = system.matrices["H0"], system.matrices["S"]
        h = system.matrices["H"].aligned_to(h0)
        err = spin_free(h0, hp.data - h.data)
        true = spin_free(h0, h.data - h0.data)
        cases = (with_spin_free(h0, h.data, err),
                 with_spin_free(h0, h.data, filter_near_null(h0.with_data(err, "none"), s, a.s0)),
                 with_spin_free(h0, h0.data, filter_near_null(h0.with_data(true, "none"), s, a.s0)))
        line = f"{system.meta['id']:6s} {system.formula:9s}"
        for m in cases:
            p = evaluate(system, m)["predicted"]
            line += f" | {p['band_mae_shifted_mev']:7.1f} {p['ghost_states']:3d}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
