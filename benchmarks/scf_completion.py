"""Self-consistent completion on a split of the bundled data: accuracy and cost beside the network alone
and ABACUS's own SCF.

For every structure of the model card's split: the network's H (as `predict`), the SCF completion
started from it and from the atoms' density (H(0)), each scored by `nextham_dft.evaluation.evaluate`
against ABACUS's converged H; iterations and wall seconds beside ABACUS's logged SCF (its iterations
and seconds, one core). Reads the project's raw `dataset.h5` (which holds ABACUS's timings) with the
`pp_orb/` folder beside it.

    python benchmarks/scf_completion.py ../shared/data/abacus-dojo-fr/dataset.h5 --split val --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.abacus.dojo_h5 import read_structure  # noqa: E402
from nextham_dft.core.scf import ScfSettings, complete_scf  # noqa: E402
from nextham_dft.evaluation import evaluate, summarise  # noqa: E402
from nextham_dft.model.predict import predict_hamiltonian  # noqa: E402
from nextham_dft.model.store import bundled_model_path, load_model, resolve_model_path  # noqa: E402

METRICS = ["h_mae_shifted_mev", "band_mae_shifted_mev", "band_mae_mev", "ghost_states", "soc_mae_uev"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="the raw abacus-dojo-fr dataset.h5 (pp_orb/ beside it)")
    ap.add_argument("--model", default=str(bundled_model_path()))
    ap.add_argument("--split", default="val", choices=["val", "test", "train"])
    ap.add_argument("--spacing", type=float, default=ScfSettings.spacing)
    ap.add_argument("--ids", default=None, help="comma-separated ids (default: the split's)")
    ap.add_argument("--held-out", action="store_true",
                    help="only the split's structures with an element held out of training (default: only the others)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model, card = load_model(resolve_model_path(args.model))
    ids = args.ids.split(",") if args.ids else sorted(card["split"][args.split])
    held = set(card["split"].get("held_out_elements", []))
    cfg = ScfSettings(spacing=args.spacing)
    rows = {"network": [], "scf_from_network": [], "scf_from_atoms": []}
    cost = []
    for sid in ids:
        s = read_structure(args.data, sid)
        if bool(set(s.elements) & held) != args.held_out:
            continue
        meta = s.meta["meta"]
        t = time.perf_counter()
        h_net = predict_hamiltonian(model, s)
        t_net = time.perf_counter() - t
        a = complete_scf(s, start=h_net, settings=cfg)
        b = complete_scf(s, settings=cfg)
        for key, h in (("network", h_net), ("scf_from_network", a.hamiltonian), ("scf_from_atoms", b.hamiltonian)):
            rows[key].append({"id": sid, "formula": s.formula, "spin": s.spin_mode, **evaluate(s, h)})
        cost.append({"id": sid, "formula": s.formula, "network_s": t_net, "from_network_iter": a.iterations,
                     "from_network_s": a.seconds, "from_network_converged": a.converged,
                     "from_atoms_iter": b.iterations, "from_atoms_s": b.seconds, "from_atoms_converged": b.converged,
                     "abacus_iter": int(meta.get("scf_iterations", -1)), "abacus_scf_s": float(meta.get("scf_seconds", np.nan)),
                     "abacus_h0_s": float(meta.get("h0_seconds", np.nan))})
        c, r = cost[-1], rows["scf_from_network"][-1]["predicted"]
        print(f"{sid} {s.formula:10s} net {rows['network'][-1]['predicted']['band_mae_shifted_mev']:8.1f} → scf "
              f"{r['band_mae_shifted_mev']:6.2f} meV ({c['from_network_iter']} it, {c['from_network_s']:.1f} s; "
              f"from atoms {c['from_atoms_iter']} it, {c['from_atoms_s']:.1f} s; ABACUS {c['abacus_iter']} it, "
              f"{c['abacus_scf_s']:.1f} s)", flush=True)
    summ = {k: summarise(v) for k, v in rows.items()}
    print(f"\n{len(cost)} {args.split} structures; model {card.get('name')}; grid {cfg.spacing} Å")
    print(f"{'metric':<24}{'H(0)':>10}{'network':>10}{'SCF (net)':>11}{'SCF (atoms)':>12}")
    for m in METRICS + ["band_mae_shifted_median_mev"]:
        if m in summ["network"]["predicted"]:
            print(f"{m:<24}{summ['network']['h0'][m]:10.3f}{summ['network']['predicted'][m]:10.3f}"
                  f"{summ['scf_from_network']['predicted'][m]:11.3f}{summ['scf_from_atoms']['predicted'][m]:12.3f}")
    tot = {k: float(np.nansum([c[k] for c in cost])) for k in
           ("network_s", "from_network_s", "from_atoms_s", "abacus_scf_s", "abacus_h0_s")}
    it = {k: float(np.mean([c[k] for c in cost])) for k in ("from_network_iter", "from_atoms_iter", "abacus_iter")}
    unconv = sum(not (c["from_network_converged"] and c["from_atoms_converged"]) for c in cost)
    print(f"\nmean iterations: from the network {it['from_network_iter']:.1f}, from the atoms {it['from_atoms_iter']:.1f}, "
          f"ABACUS {it['abacus_iter']:.1f}; not converged: {unconv}")
    print(f"total seconds: network {tot['network_s']:.1f}, SCF from the network {tot['from_network_s']:.1f}, "
          f"from the atoms {tot['from_atoms_s']:.1f}; ABACUS zeroth step {tot['abacus_h0_s']:.1f}, ABACUS SCF "
          f"{tot['abacus_scf_s']:.1f} (one core each)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summ, "rows": rows, "cost": cost, "spacing": cfg.spacing,
                                               "model": card.get("name")}, indent=1))


if __name__ == "__main__":
    main()
