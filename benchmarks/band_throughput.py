"""k-space throughput: H(k), S(k) assembly and diagonalisation per k-point, supercells of shipped/shared runs.

Prints a table and writes JSON. Supercells are exact re-indexings of the primitive H(R)
(nextham_dft.core.supercell), so no DFT run is needed.
Usage: python benchmarks/band_throughput.py [--run DIR] [--sizes 1 8 27 50] [--nk 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nextham_dft.core.kspace import KAssembler, bands_near, solve_generalized
from nextham_dft.core.supercell import make_supercell
from nextham_dft.registry import read_run

HERE = Path(__file__).resolve().parents[1]


def diag_matrix(n: int) -> np.ndarray:
    """A near-cubic 3×3 diagonal supercell matrix with about n cells."""
    a = max(1, round(n ** (1 / 3)))
    b = max(1, round((n / a) ** 0.5))
    c = max(1, round(n / (a * b)))
    return np.diag([a, b, c])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(HERE.parent / "shared/data/abacus-dojo-fr/supercell/alp_prim_soc"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 27, 50])
    ap.add_argument("--nk", type=int, default=32)
    ap.add_argument("--diag-nk", type=int, default=2)
    ap.add_argument("--sparse-from", type=int, default=64, help="Also time the shift-invert path from this many atoms.")
    ap.add_argument("--json", default="band_throughput.json")
    args = ap.parse_args()
    prim = read_run(args.run)
    rows = []
    print(f"{'atoms':>6}{'dim':>7}{'assemble H+S ms/k':>19}{'k/s (assembly)':>16}{'diag s/k':>10}{'20 near E_F s/k':>17}")
    for n in args.sizes:
        P = diag_matrix(n)
        sc = make_supercell(prim, P)
        spinor = sc.spin_mode == "noncollinear"
        t = time.perf_counter()
        ha = KAssembler(sc.matrices["H"], spinor=spinor)
        sa = KAssembler(sc.matrices["S"], spinor=spinor)
        setup = time.perf_counter() - t
        k = np.random.default_rng(0).random((args.nk, 3))
        step = max(1, int(4e8 // (16 * ha.dim**2 * 2)))
        t = time.perf_counter()
        for a in range(0, len(k), step):
            ha(k[a : a + step])
            sa(k[a : a + step])
        t_asm = (time.perf_counter() - t) / len(k)
        kd = k[: args.diag_nk]
        t = time.perf_counter()
        for kk in kd:
            solve_generalized(ha(kk[None]), sa(kk[None]))
        t_diag = (time.perf_counter() - t) / len(kd)
        t_sparse = float("nan")
        if sc.n_atoms >= args.sparse_from:
            ef = prim.fermi_ev.get("H", 0.0)
            t = time.perf_counter()
            bands_near(sc.matrices["H"], sc.matrices["S"], kd, ef, 20)
            t_sparse = (time.perf_counter() - t) / len(kd)
        rows.append({"atoms": sc.n_atoms, "dim": ha.dim, "setup_s": setup, "assembly_s_per_k": t_asm,
                     "diag_s_per_k": t_diag, "shift_invert_s_per_k": t_sparse, "spin": sc.spin_mode})
        print(f"{sc.n_atoms:6d}{ha.dim:7d}{1e3 * t_asm:19.2f}{1 / t_asm:16.1f}{t_diag:10.3f}{t_sparse:17.3f}", flush=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
