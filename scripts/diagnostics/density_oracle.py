"""Ceiling of a density network's representation: fit Δρ* = ρ* − ρ_atoms with the package's atom-centred
Gaussians (``core.gaussians``: the ridge fit the density network is trained to predict) and score
H[ρ_atoms + fit], one evaluation with no iteration, like a prediction against the converged H.

ρ* is the density of ABACUS's converged H on the completion's grid (``core.scf.SelfConsistency``). The fit
sees the converged H, so this is a ceiling, not a model: a network on that basis cannot do better than
its fit, except by chance.

    python scripts/diagnostics/density_oracle.py DATASET.h5 --split val [--sigmas 0.25,0.5,1.0] [--lmax 2]
    python scripts/diagnostics/density_oracle.py DATASET.h5 --ids s0057,t0064
    python scripts/diagnostics/density_oracle.py DATASET.h5 --split val --bonds   # Gaussians at the bond midpoints too

DATASET.h5 is a `nextham-dft dataset build` file with the pseudopotentials (the density recipe's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nextham_dft.core.gaussians import density_of, fit_density  # noqa: E402
from nextham_dft.core.scf import SelfConsistency  # noqa: E402
from nextham_dft.dataset import iter_dataset  # noqa: E402
from nextham_dft.evaluation import evaluate  # noqa: E402
from nextham_dft.model.density_net import DensityConfig, density_sites  # noqa: E402

SPLIT = Path(__file__).resolve().parents[1] / "density_recipe" / "split.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="a `dataset build` file with the pseudopotentials")
    ap.add_argument("--split", default="val", help=f"a split of {SPLIT.name} (held-out element left out)")
    ap.add_argument("--ids", default=None, help="comma-separated structure ids instead of a split")
    ap.add_argument("--lmax", type=int, default=2)
    ap.add_argument("--sigmas", default="0.25,0.5,1.0", help="Gaussian widths, Å")
    ap.add_argument("--bonds", action="store_true", help="the same functions at the bond midpoints too (DensityConfig.bond_sites)")
    args = ap.parse_args()
    cfg = DensityConfig(sigmas=tuple(float(x) for x in args.sigmas.split(",")), lmax=args.lmax, bond_sites=args.bonds)
    basis = cfg.basis
    split = json.loads(SPLIT.read_text())
    ids = args.ids.split(",") if args.ids else split[args.split]
    held = set(split.get("held_out_elements", [])) if not args.ids else set()
    rows = []
    for s in iter_dataset(args.data, ids=ids):
        if set(s.elements) & held:
            continue
        sc = SelfConsistency(s, 0.15)
        rho, _ = sc.density(s.matrices["H"])
        target = rho - sc.rho_atoms
        sites, _z = density_sites(s, cfg)
        fit = density_of(sites, sc.shape, sc.origin, fit_density(sites, sc.shape, sc.origin, sc.dv, target, basis), basis)
        misfit = np.abs(fit - target).sum() * sc.dv / sc.nelec
        ev = evaluate(s, sc.hamiltonian(sc.rho_atoms + fit))
        p = ev["predicted"]
        rows.append((p["band_mae_shifted_mev"], p["h_mae_shifted_mev"]))
        print(f"{s.meta['id']} {s.formula:10s} ∫|Δρ*|/N {np.abs(target).sum() * sc.dv / sc.nelec:.4f}, misfit {misfit:.4f}; "
              f"H after μS {p['h_mae_shifted_mev']:.3f} meV, shifted bands {p['band_mae_shifted_mev']:.2f} meV "
              f"(H(0) {ev['h0']['band_mae_shifted_mev']:.1f})", flush=True)
    a = np.array(rows)
    print(f"\nσ {basis.sigmas} Å, l ≤ {basis.lmax} ({basis.per_atom} per site{', bond sites' if args.bonds else ''}), {len(a)} structures: shifted bands "
          f"mean {a[:, 0].mean():.2f} / median {np.median(a[:, 0]):.2f} / max {a[:, 0].max():.1f} meV; "
          f"H after μS {a[:, 1].mean():.3f} meV")


if __name__ == "__main__":
    main()
