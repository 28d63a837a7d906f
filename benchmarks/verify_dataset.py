"""Eigenvalues of every structure of abacus-dojo-fr/dataset.h5 (and the raw runs) against ABACUS's own.

Prints a table: per structure, the largest |ours − ABACUS| (meV) within 10 eV of E_F
at the run's k-points, for the zeroth step and the converged H; writes JSON.
Usage: python benchmarks/verify_dataset.py [--data ../shared/data/abacus-dojo-fr] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nextham_dft.adapters.abacus import read_run
from nextham_dft.adapters.abacus.dojo_h5 import read_structure, structure_ids
from nextham_dft.testing import eigenvalue_error


def window_error(system, tag: str) -> tuple[float, float]:
    """(within 10 eV of E_F, all bands) largest eigenvalue error in meV."""
    w, a = eigenvalue_error(system, tag)
    return w * 1e3, a * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/abacus-dojo-fr"))
    ap.add_argument("--json", default="verify_dataset.json")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    data = Path(args.data)
    rows = []
    ids = structure_ids(data / "dataset.h5")
    if args.limit:
        ids = ids[: args.limit]
    print(f"{'id':<8}{'formula':<10}{'spin':<14}{'H0 win':>9}{'H win':>9}{'H0 all':>9}{'H all':>9}  (meV)")
    jobs = [("dataset.h5", sid) for sid in ids] + [("runs", p.name) for p in sorted((data / "runs").iterdir())]
    t0 = time.time()
    for src, sid in jobs:
        system = read_structure(data / "dataset.h5", sid) if src == "dataset.h5" else read_run(data / "runs" / sid)
        (w0, a0), (w1, a1) = window_error(system, "H0"), window_error(system, "H")
        rows.append({"source": src, "id": sid, "formula": system.formula, "spin": system.spin_mode,
                     "h0_window_mev": w0, "h_window_mev": w1, "h0_all_mev": a0, "h_all_mev": a1})
        tag = sid if src == "dataset.h5" else f"run:{sid}"
        print(f"{tag:<8}{system.formula:<10}{system.spin_mode:<14}{w0:9.4f}{w1:9.4f}{a0:9.4f}{a1:9.4f}", flush=True)
    worst = max(max(r["h0_window_mev"], r["h_window_mev"]) for r in rows)
    print(f"\n{len(rows)} structures in {time.time() - t0:.0f} s; worst within 10 eV of E_F: {worst:.4f} meV "
          f"({'PASS' if worst <= 0.1 else 'FAIL'} at 0.1 meV)")
    Path(args.json).write_text(json.dumps({"worst_window_mev": worst, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
