"""A density model's prediction time and peak memory versus cell size, on n×n×n supercells of a run.

The supercells are exact re-indexings of the run's H(0) and S (``core.supercell``); each keeps the run's
pseudopotentials, and its Γ-centred k-mesh is the run's divided by n (at least 1 per axis), so every cell
samples the same density of k-points. Each size runs in a fresh subprocess (peak RSS per size), one
thread. Stages as ``model.density_predict``: grid set-up, first step (one diagonalisation; with a probe step,
one more H[ρ] and diagonalisation) with the Gaussian fits and the network, and the rest: H[ρ], and for
``--model refined`` (predict's default) the Pulay step's diagonalisation and H[ρ] too; ``--model select`` the
second probe and both evaluations.

    OMP_NUM_THREADS=1 python benchmarks/density_scaling.py [--run examples/abacus-si2] [--n 1 2 3 4] [--model refined]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def one(run: str, n: int, model_path: str) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from nextham_dft.core.supercell import make_supercell
    from nextham_dft.core.system import KPoints
    from nextham_dft.model.density_predict import NAMED_ROUTES, ROUTES
    from nextham_dft.model.store import load_model, resolve_model_path
    from nextham_dft.registry import read_run

    torch.set_num_threads(1)
    prim = read_run(run)
    route = model_path if model_path in NAMED_ROUTES else "density"
    model, _ = load_model(resolve_model_path("density" if route != "density" else model_path))
    system = make_supercell(prim, np.eye(3, dtype=int) * n)
    system.atomic_densities = prim.atomic_densities
    mesh = tuple(max(1, int(round(m / n))) for m in prim.kpoints.mesh)
    system.kpoints = KPoints.from_mesh(mesh)
    system.matrices.pop("H", None)
    t = time.perf_counter()
    pred = ROUTES[route](model, system)
    total = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"n": n, "atoms": system.n_atoms, "kmesh": list(mesh), "grid": list(pred.consistency.shape),
            "total_s": total, **pred.timings, "peak_rss_gb": rss,
            "after_network_s": total - pred.timings["grid_setup_s"] - pred.timings["first_step_and_network_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(HERE / "examples" / "abacus-si2"))
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--model", default="density")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.run, args.one, args.model)))
        return
    rows = []
    print(f"{'atoms':>6}{'k-mesh':>10}{'grid':>16}{'total s':>9}{'grid s':>8}{'step+net s':>11}{'rest s':>8}{'peak GB':>9}")
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--run", args.run, "--model", args.model, "--one", str(n)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['atoms']:6d}{'×'.join(map(str, r['kmesh'])):>10}{'×'.join(map(str, r['grid'])):>16}{r['total_s']:9.1f}"
              f"{r['grid_setup_s']:8.1f}{r['first_step_and_network_s']:11.1f}{r['after_network_s']:8.1f}"
              f"{r['peak_rss_gb']:9.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
