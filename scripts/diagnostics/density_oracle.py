"""Ceiling of a density-predicting network (session 23): fit Δρ* = ρ* − ρ_atoms with atom-centred
Gaussians and feed the fit to the completion's H[ρ].

ρ* is the density of ABACUS's converged H on the completion's grid (`core.scf.SelfConsistency`). The
basis per atom is (r/σ)^l Y_lm(r̂) exp(−r²/2σ²), for l = 0..lmax and the widths σ (Å), with all
periodic images summed. That is what an equivariant network would output per atom: irreps 0e + 1o + 2e
per width. The least-squares fit on the grid keeps the cell neutral. The fitted density's H is scored
like a prediction against the converged H.

    python scripts/diagnostics/density_oracle.py ../shared/data/abacus-dojo-fr/dataset.h5 s0057,t0064 --lmax 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.abacus.dojo_h5 import read_structure  # noqa: E402
from nextham_dft.core.density import grid_points, periodic_images  # noqa: E402
from nextham_dft.core.scf import SelfConsistency  # noqa: E402
from nextham_dft.core.sph import e3nn_harmonics  # noqa: E402
from nextham_dft.evaluation import evaluate  # noqa: E402


def gaussian_basis(system, shape, origin, sigmas: np.ndarray, lmax: int) -> np.ndarray:
    """(grid points, atoms × Σ_l (2l+1) × widths) the basis functions at origin + (n/N)·A (images summed)."""
    lat = np.asarray(system.lattice)
    pts = (origin + grid_points(lat, shape)).reshape(-1, 3)
    reach = 5.0 * float(sigmas.max())
    owner, _T, pos = periodic_images(lat, system.positions, reach, margin=2)
    nf = len(sigmas) * sum(2 * l + 1 for l in range(lmax + 1))
    out = np.zeros((len(pts), system.n_atoms * nf))
    tree = cKDTree(pts)
    for a, p in zip(owner, pos):
        near = np.asarray(tree.query_ball_point(p, reach), dtype=np.int64)
        if not len(near):
            continue
        d = pts[near] - p
        r = np.linalg.norm(d, axis=1)
        col = a * nf
        for l in range(lmax + 1):
            y = e3nn_harmonics(l, np.where(r[:, None] > 1e-12, d, [0.0, 0.0, 1.0]))
            for sg in sigmas:
                out[near, col : col + 2 * l + 1] += ((r / sg) ** l * np.exp(-r * r / (2 * sg * sg)))[:, None] * y
                col += 2 * l + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="the raw abacus-dojo-fr dataset.h5 (pp_orb/ beside it)")
    ap.add_argument("ids", help="comma-separated structure ids")
    ap.add_argument("--lmax", type=int, default=2)
    ap.add_argument("--sigmas", default="0.25,0.5,1.0,2.0", help="Gaussian widths, Å")
    args = ap.parse_args()
    sigmas = np.array([float(x) for x in args.sigmas.split(",")])
    bands = []
    for sid in args.ids.split(","):
        s = read_structure(args.data, sid)
        sc = SelfConsistency(s, 0.15)
        rho, _ = sc.density(s.matrices["H"])
        target = (rho - sc.rho_atoms).reshape(-1)
        basis = gaussian_basis(s, sc.shape, sc.origin, sigmas, args.lmax)
        w = 1e3  # neutrality, as one heavy row
        coef, *_ = np.linalg.lstsq(np.vstack([basis, w * basis.sum(0) * sc.dv]),
                                   np.concatenate([target, [w * target.sum() * sc.dv]]), rcond=None)
        fit = (basis @ coef).reshape(sc.shape)
        misfit = np.abs(fit.reshape(-1) - target).sum() * sc.dv / sc.nelec
        size = np.abs(target).sum() * sc.dv / sc.nelec
        ev = evaluate(s, sc.hamiltonian(sc.rho_atoms + fit))
        p = ev["predicted"]
        bands.append(p["band_mae_shifted_mev"])
        print(f"{sid} {s.formula:10s} ∫|Δρ*|/N {size:.4f}, misfit {misfit:.4f}; H after μS {p['h_mae_shifted_mev']:.3f} meV, "
              f"shifted bands {p['band_mae_shifted_mev']:.1f} meV (H(0) {ev['h0']['band_mae_shifted_mev']:.1f})", flush=True)
    print(f"mean shifted band MAE {np.mean(bands):.2f} meV over {len(bands)} structures")


if __name__ == "__main__":
    main()
