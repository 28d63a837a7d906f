"""How close each secant factor's density is to the converged one, before any network: the relative error
⟨x − Δρ*, x − Δρ*⟩ / ⟨Δρ*, Δρ*⟩ in the density model's training metric (Hartree + xc_weight·L2, on the grid) of

- Δρ1 = ρ_out(H(0)) − ρ_atoms (no probe);
- the secant density Δρ1 + b·u of each ``DensityConfig.secant`` (``density_train.secant_factor``), u the probe
  step's response Δρ2 − Δρ1;
- the best combination x·Δρ1 + y·u (it needs the answer: a floor for any secant factor).

With ``--second-probe``, a second probe from ρ_atoms + u gives u2 = J·u = β·J²·Δρ1 (one more H[ρ] and
diagonalisation), and two more columns: the best combination of Δρ1, u and u2 ("best3", the floor of a two-probe
model), and "asymmetry" = |⟨u, u⟩ − β⟨Δρ1, u2⟩| / ⟨u, u⟩ = |⟨JΔρ1, JΔρ1⟩ − ⟨Δρ1, J²Δρ1⟩| / ⟨JΔρ1, JΔρ1⟩: how far J
is from self-adjoint in the metric, which the moment-based factors (projection, Radau) assume.

Δρ* is the density of the run's converged H on the same grid. One JSON line per structure, then a summary.

    python scripts/diagnostics/secant_factors.py DATASET.h5 --split train,val [--probe 0.3] [--part 0/2]
    python scripts/diagnostics/secant_factors.py DATASET.h5 --ids t0042,t0064 --second-probe

DATASET.h5 is a `nextham-dft dataset build` file with the pseudopotentials (the density recipe's); the split is
read from scripts/density_recipe/split.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nextham_dft.core.scf import SelfConsistency  # noqa: E402
from nextham_dft.dataset import iter_dataset  # noqa: E402
from nextham_dft.model.density_net import SECANTS, DensityConfig  # noqa: E402
from nextham_dft.model.density_train import metric_kernel, secant_factor  # noqa: E402

SPLIT = Path(__file__).resolve().parents[1] / "density_recipe" / "split.json"


def structure_errors(system, beta: float, xc_weight: float, spacing: float, second_probe: bool = False) -> dict:
    """The relative errors (see the module docstring) of one structure, and each method's b."""
    sc = SelfConsistency(system, spacing)

    def inner(a: np.ndarray, b: np.ndarray) -> float:
        return float((a * metric_kernel(sc, b, xc_weight)).sum() * sc.dv)

    target = sc.density(system.matrices["H"])[0] - sc.rho_atoms
    d1 = sc.density(sc.h0)[0] - sc.rho_atoms
    u = sc.density(sc.hamiltonian(sc.rho_atoms + beta * d1))[0] - sc.rho_atoms - d1
    norm = inner(target, target)

    def rel(x: np.ndarray) -> float:
        return inner(x - target, x - target) / norm

    row = {"id": system.meta.get("id", ""), "formula": system.formula, "d1": rel(d1)}
    factors = {}
    for method in SECANTS:
        factors[method] = secant_factor(sc, d1, u, beta, xc_weight, method)
        row[method] = rel(d1 + factors[method] * u)
    gram = np.array([[inner(d1, d1), inner(d1, u)], [inner(u, d1), inner(u, u)]])
    x, y = np.linalg.solve(gram, [inner(d1, target), inner(u, target)])
    row["best"] = rel(x * d1 + y * u)
    row["factors"] = factors
    row["best_xy"] = [float(x), float(y)]
    if second_probe:
        u2 = sc.density(sc.hamiltonian(sc.rho_atoms + u))[0] - sc.rho_atoms - d1  # J·u
        vs = (d1, u, u2)
        gram3 = np.array([[inner(a, b) for b in vs] for a in vs])
        coef = np.linalg.solve(gram3, [inner(v, target) for v in vs])
        row["best3"] = rel(sum(c * v for c, v in zip(coef, vs)))
        row["asymmetry"] = abs(gram3[1, 1] - beta * gram3[0, 2]) / gram3[1, 1]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--split", default="train,val", help="comma-separated splits of the density recipe's split.json")
    ap.add_argument("--ids", default=None, help="comma-separated structure ids instead of --split")
    ap.add_argument("--probe", type=float, default=0.3, help="β of the probe step")
    ap.add_argument("--part", default="0/1", help="K/N: every N-th structure from the K-th (parallel runs)")
    ap.add_argument("--second-probe", action="store_true", help="also the two-probe floor and J's asymmetry")
    args = ap.parse_args()
    if args.ids:
        ids = args.ids.split(",")
    else:
        split = json.loads(SPLIT.read_text())
        ids = sorted(i for name in args.split.split(",") for i in split[name])
    k, n = (int(v) for v in args.part.split("/"))
    cfg = DensityConfig()
    rows = []
    for system in iter_dataset(args.data, ids=sorted(ids)[k::n]):
        rows.append(structure_errors(system, args.probe, cfg.xc_weight, cfg.spacing, args.second_probe))
        print(json.dumps(rows[-1]), flush=True)
    for key in ("d1", *SECANTS, "best") + (("best3", "asymmetry") if args.second_probe else ()):
        v = np.array([r[key] for r in rows])
        print(f"# {key:10s} mean {v.mean():.4f}  median {np.median(v):.4f}  90th percentile "
              f"{np.percentile(v, 90):.4f}  worst {v.max():.3f}")


if __name__ == "__main__":
    main()
