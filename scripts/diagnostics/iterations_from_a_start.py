"""Band error after k iterations of the self-consistent completion, from a density model's predicted density,
from a correction network's H, and from the atoms: how far a few iterations take each start.

    OMP_NUM_THREADS=1 python scripts/diagnostics/iterations_from_a_start.py ../shared/data/abacus-dojo-fr/dataset.h5 --split val --k 1,2,3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.abacus.dojo_h5 import read_structure  # noqa: E402
from nextham_dft.core.scf import ScfSettings, complete_scf  # noqa: E402
from nextham_dft.evaluation import evaluate  # noqa: E402
from nextham_dft.model.density_predict import predict_density  # noqa: E402
from nextham_dft.model.predict import predict_hamiltonian  # noqa: E402
from nextham_dft.model.store import load_model, resolve_model_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--k", default="1,2,3", help="iteration counts")
    ap.add_argument("--density", default="density")
    ap.add_argument("--network", default="bundled")
    ap.add_argument("--tols", default=None,
                    help="instead: from the density model's density only, the completion to each of these tolerances "
                         "(iterations and band error; predict --model density --scf --scf-tol T)")
    args = ap.parse_args()
    if args.tols:
        return by_tolerance(args)
    ks = [int(x) for x in args.k.split(",")]
    dmodel, card = load_model(resolve_model_path(args.density))
    net = load_model(resolve_model_path(args.network))[0]
    held = set(card["split"].get("held_out_elements", []))
    table: dict[str, list] = {}
    for sid in sorted(card["split"][args.split]):
        s = read_structure(args.data, sid)
        if set(s.elements) & held:
            continue
        pred = predict_density(dmodel, s)
        h_net = predict_hamiltonian(net, s)
        row = {"density k=0": evaluate(s, pred.hamiltonian)["predicted"]["band_mae_shifted_mev"],
               "network k=0": evaluate(s, h_net)["predicted"]["band_mae_shifted_mev"]}
        for k in ks:
            cfg = ScfSettings(max_iter=k, tol=0.0)
            # k iterations: k − 1 mixing steps after the start's own H, whose output density is the k-th
            a = complete_scf(s, settings=cfg, start_density=pred.density, consistency=pred.consistency)
            b = complete_scf(s, start=h_net, settings=cfg, consistency=pred.consistency)
            c = complete_scf(s, settings=cfg, consistency=pred.consistency)
            row[f"density k={k}"] = evaluate(s, a.hamiltonian)["predicted"]["band_mae_shifted_mev"]
            row[f"network k={k}"] = evaluate(s, b.hamiltonian)["predicted"]["band_mae_shifted_mev"]
            row[f"atoms k={k}"] = evaluate(s, c.hamiltonian)["predicted"]["band_mae_shifted_mev"]
        for key, v in row.items():
            table.setdefault(key, []).append(v)
        print(sid, s.formula, "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    print(f"\nshifted band MAE (meV) over {len(table['density k=0'])} structures: mean / median / max")
    for key in sorted(table, key=lambda x: (x.split()[0], int(x.split("=")[1]))):
        v = np.array(table[key])
        print(f"{key:<14}{v.mean():9.2f}{np.median(v):9.2f}{v.max():9.1f}")


def by_tolerance(args) -> None:
    tols = [float(x) for x in args.tols.split(",")]
    dmodel, card = load_model(resolve_model_path(args.density))
    held = set(card["split"].get("held_out_elements", []))
    bands: dict[float, list] = {t: [] for t in tols}
    iters: dict[float, list] = {t: [] for t in tols}
    for sid in sorted(card["split"][args.split]):
        s = read_structure(args.data, sid)
        if set(s.elements) & held:
            continue
        pred = predict_density(dmodel, s)
        line = []
        for t in tols:
            r = complete_scf(s, settings=ScfSettings(tol=t), start_density=pred.density, consistency=pred.consistency)
            bands[t].append(evaluate(s, r.hamiltonian)["predicted"]["band_mae_shifted_mev"])
            iters[t].append(r.iterations)
            line.append(f"tol {t:g}: {r.iterations} it, {bands[t][-1]:.2f} meV")
        print(sid, s.formula, "; ".join(line), flush=True)
    print(f"\nfrom the predicted density, over {len(bands[tols[0]])} structures: tolerance, mean iterations, "
          f"shifted band MAE mean / median / max (meV)")
    for t in tols:
        v = np.array(bands[t])
        print(f"{t:<10g}{np.mean(iters[t]):6.1f}{v.mean():9.2f}{np.median(v):9.2f}{v.max():9.1f}")


if __name__ == "__main__":
    main()
