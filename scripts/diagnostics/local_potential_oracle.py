"""Local-potential oracle: how much of ΔH = H − H(0) is the matrix of an atom-centred local potential?

The SCF changes only the density-dependent local potential (Hartree + exchange-correlation), so
ΔH(R)_ij = ⟨φ_i| ΔV |φ_j⟩ for one periodic field ΔV(r). This script fits, per structure and by least
squares on the spin-free entries of the stored half, ΔH ≈ μS + Σ_k Σ_m c_km V^(k,m), with V^(k,m) the
integrals of Gaussians of width σ_m centred on atom k and its images (`nextham_dft.core.potential`)
and c_km free. It prints the H MAE after μS and the band metrics of H(0) + fit beside H(0)'s and
(with --model) a model's: a ceiling for any model that predicts the coefficients c_km from the
structure, since the fit sees the converged H. A model's prediction needs no converged H.

Usage: python scripts/diagnostics/local_potential_oracle.py DATA.h5 [--split val] [--model M]
       [--sigmas 0.3,0.6,1.2,2.4] [--spacing 0.2] [--json out.json]
"""

from __future__ import annotations

import json
import time

import numpy as np
from diag_common import spin_free, split_parser, with_spin_free

from nextham_dft.core.potential import potential_integrals
from nextham_dft.dataset import iter_dataset
from nextham_dft.evaluation import evaluate, summarise
from nextham_dft.model.predict import predict_hamiltonian
from nextham_dft.model.store import load_model, resolve_model_path

KEYS = ("h_mae_shifted_mev", "h_mae_onsite_mev", "h_mae_lt3A_mev", "h_mae_3to6A_mev", "band_mae_shifted_mev",
        "band_mae_shifted_median_mev", "band_mae_mev", "ghost_states", "far_states")


def oracle_fit(system, sigmas, spacing: float) -> np.ndarray:
    """Spin-free correction (nnz of H(0)) μS + Σ c_km V^(k,m) fitted to the converged H by least squares."""
    h0 = system.matrices["H0"]
    s = system.matrices["S"].aligned_to(h0).data
    v = potential_integrals(system, sigmas, h0, spacing=spacing)
    d = spin_free(h0, system.matrices["H"].aligned_to(h0).data) - spin_free(h0, h0.data)
    a = np.concatenate([s[:, None], v.reshape(len(s), -1)], axis=1)
    coef, *_ = np.linalg.lstsq(a, d, rcond=None)
    return a @ coef


def main() -> None:
    ap = split_parser(__doc__)
    ap.add_argument("--sigmas", default="0.3,0.6,1.2,2.4", help="Gaussian widths (Å), comma-separated")
    ap.add_argument("--spacing", type=float, default=0.2, help="grid step of the quadrature (Å)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sigmas = [float(x) for x in a.sigmas.split(",")]
    model, card = load_model(resolve_model_path(a.model))
    held = set(card["split"].get("held_out_elements", []))
    rows_fit, rows_model = [], []
    t0 = time.perf_counter()
    for system in iter_dataset(a.data, ids=card["split"][a.split]):
        if set(system.elements) & held:
            continue
        h0 = system.matrices["H0"]
        fit = with_spin_free(h0, h0.data, oracle_fit(system, sigmas, a.spacing))
        rows_fit.append({"id": system.meta["id"], "formula": system.formula, **evaluate(system, fit)})
        rows_model.append({"id": system.meta["id"], **evaluate(system, predict_hamiltonian(model, system))})
        r, m = rows_fit[-1], rows_model[-1]
        print(f"{r['id']:>8} {r['formula']:>10}  H after μS: H(0) {r['h0']['h_mae_shifted_mev']:7.3f}  "
              f"model {m['predicted']['h_mae_shifted_mev']:7.3f}  fit {r['predicted']['h_mae_shifted_mev']:7.3f} meV   "
              f"shifted bands: H(0) {r['h0']['band_mae_shifted_mev']:7.1f}  model "
              f"{m['predicted']['band_mae_shifted_mev']:7.1f}  fit {r['predicted']['band_mae_shifted_mev']:7.1f} meV",
              flush=True)
    fit_s, model_s = summarise(rows_fit), summarise(rows_model)
    table = {"H(0)": fit_s["h0"], "model": model_s["predicted"], "local-potential fit": fit_s["predicted"]}
    print(f"\n{len(rows_fit)} {a.split} structures, widths {sigmas} Å, grid {a.spacing} Å, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'metric':<28}" + "".join(f"{n:>22}" for n in table))
    for k in KEYS:
        print(f"{k:<28}" + "".join(f"{table[n].get(k, float('nan')):22.3f}" for n in table))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"sigmas": sigmas, "spacing": a.spacing, "summary": table, "fit": rows_fit,
                       "model": rows_model}, f, indent=1)


if __name__ == "__main__":
    main()
