"""Where a model's error sits in the orthonormalised basis, by S(k) eigenvalue, beside H(0)'s.

For the eigenvectors v_a of S(k) (eigenvalue s_a), the orthonormalised error of a Hamiltonian is
M_ab = v_a^† E(k) v_b / sqrt(s_a s_b), E = H_pred − H_DFT. The script sums |M_ab|² in bins of
min(s_a, s_b), at up to 12 of the run's k-points, for the model and for H(0) (E = −ΔH_true), per
structure, and prints the split's mean of each bin relative to H(0)'s total.

Usage: python scripts/diagnostics/overlap_spectrum_error.py DATA.h5 [--model PATH] [--split val]
"""

from __future__ import annotations

import numpy as np

from diag_common import split_parser, spin_free, split_systems
from nextham_dft.core.kspace import KAssembler

BINS = (0.0, 1e-3, 1e-2, 1e-1, np.inf)


def binned_error(err_k: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Σ |v_a^† E v_b|² / (s_a s_b) over pairs with min(s_a, s_b) in each of BINS (eV²)."""
    m = np.einsum("kia,kij,kjb->kab", v.conj(), err_k, v) / np.sqrt(w[:, :, None] * w[:, None, :])
    low = np.minimum(w[:, :, None], w[:, None, :])
    power = np.abs(m) ** 2
    return np.array([power[(low >= lo) & (low < hi)].sum() for lo, hi in zip(BINS[:-1], BINS[1:])])


def main() -> None:
    ap = split_parser(__doc__)
    a = ap.parse_args()
    labels = [f"s<{hi:g}" for hi in BINS[1:]]
    print(f"{'id':6s} {'formula':9s} {'min s':>8s}  model: " + " ".join(f"{x:>9s}" for x in labels)
          + "  H(0): " + " ".join(f"{x:>9s}" for x in labels))
    rel = []
    for system, hp in split_systems(a.model, a.data, a.split):
        h0, s = system.matrices["H0"], system.matrices["S"]
        h = system.matrices["H"].aligned_to(h0)
        k = system.kpoints.frac[:12]
        w, v = np.linalg.eigh(KAssembler(s)(k))
        true = spin_free(h0, h.data - h0.data)
        rows = [binned_error(KAssembler(h0.with_data(e, "none"))(k), w, v)
                for e in (spin_free(h0, hp.data - h0.data) - true, -true)]
        rel.append(np.array(rows) / rows[1].sum())
        print(f"{system.meta['id']:6s} {system.formula:9s} {w.min():8.1e}  model: "
              + " ".join(f"{x:9.2e}" for x in rows[0]) + "  H(0): " + " ".join(f"{x:9.2e}" for x in rows[1]))
    mean = np.mean(rel, axis=0)
    print("mean share of H(0)'s total, model:", " ".join(f"{lab} {x:.3g}" for lab, x in zip(labels, mean[0])))
    print("mean share of H(0)'s total, H(0): ", " ".join(f"{lab} {x:.3g}" for lab, x in zip(labels, mean[1])))


if __name__ == "__main__":
    main()
