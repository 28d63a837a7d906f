"""Is ΔH = H − H(0) the matrix of V_Hxc[ρ_conv] − V_Hxc[ρ_atoms]? (session 23)

For each structure: the density of ABACUS's converged H (its DM on the full k-mesh, on our grid), the
Hartree + PBE potential change from the atoms' density (`nextham_dft.core.hxc`), its matrix added to H(0)
(`core.scf.SelfConsistency.hamiltonian`), scored against the converged H like a prediction. No fitting:
if the physics of `core.scf` is right, this is the converged H up to the grid's quadrature.

    python scripts/diagnostics/hxc_from_converged_density.py ../shared/data/abacus-dojo-fr/dataset.h5 s0057,t0064
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.abacus.dojo_h5 import read_structure  # noqa: E402
from nextham_dft.core.scf import SelfConsistency  # noqa: E402
from nextham_dft.evaluation import evaluate, summarise  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="the raw abacus-dojo-fr dataset.h5 (pp_orb/ beside it)")
    ap.add_argument("ids", help="comma-separated structure ids")
    ap.add_argument("--spacing", type=float, default=0.15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for sid in args.ids.split(","):
        t = time.perf_counter()
        s = read_structure(args.data, sid)
        sc = SelfConsistency(s, args.spacing)
        rho, _ = sc.density(s.matrices["H"])
        rows.append({"id": sid, "formula": s.formula, "spin": s.spin_mode, **evaluate(s, sc.hamiltonian(rho))})
        p, h0 = rows[-1]["predicted"], rows[-1]["h0"]
        print(f"{sid} {s.formula:10s} H after μS {h0['h_mae_shifted_mev']:.3f} → {p['h_mae_shifted_mev']:.3f} meV, "
              f"shifted bands {h0['band_mae_shifted_mev']:.1f} → {p['band_mae_shifted_mev']:.2f} meV "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
    summ = summarise(rows)
    print({k: round(summ["predicted"][k], 4) for k in ("h_mae_shifted_mev", "band_mae_shifted_mev", "band_mae_mev",
                                                        "ghost_states")})
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summ, "structures": rows}, indent=1))


if __name__ == "__main__":
    main()
