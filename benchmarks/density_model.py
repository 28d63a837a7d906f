"""A density model on a split of the bundled data: accuracy and cost beside a correction network, H(0) and
ABACUS's own SCF.

For every structure of the density model card's split (structures with a held-out element apart, or
alone with --held-out): H = H[ρ_atoms + Δρ_pred] (``model.density_predict``, its stages timed), scored by
``nextham_dft.evaluation.evaluate`` against ABACUS's converged H, beside the correction network given by
--compare (default: the bundled model) and H(0); wall seconds beside ABACUS's logged zeroth step and SCF
(one core). Reads the project's raw ``dataset.h5`` (which holds ABACUS's timings) with ``pp_orb/`` beside
it. Run it on one thread (OMP_NUM_THREADS=1) to compare with ABACUS's one-core times.

    OMP_NUM_THREADS=1 python benchmarks/density_model.py ../shared/data/abacus-dojo-fr/dataset.h5 --model density --split test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.abacus.dojo_h5 import read_structure  # noqa: E402
from nextham_dft.evaluation import evaluate, summarise  # noqa: E402
from nextham_dft.core.scf import ScfSettings, complete_scf  # noqa: E402
from nextham_dft.model.density_predict import NAMED_ROUTES, ROUTES, predict_krylov, route_name  # noqa: E402
from nextham_dft.model.predict import predict_hamiltonian  # noqa: E402
from nextham_dft.model.store import load_model, resolve_model_path  # noqa: E402

METRICS = ["h_mae_shifted_mev", "band_mae_shifted_mev", "band_mae_shifted_median_mev", "band_mae_mev",
           "ghost_states", "far_states", "soc_mae_uev", "structures_better_than_h0_bands"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="the raw abacus-dojo-fr dataset.h5 (pp_orb/ beside it)")
    ap.add_argument("--model", default="density",
                    help="the density model (default: the bundled one), 'krylov': the network-free Krylov secant "
                         "(core.krylov; the bundled density model's split), or 'select': the bundled density model's "
                         "prediction or that secant, whichever has the smaller residual (predict --model select), or "
                         "'refined': the bundled density model's prediction and one Pulay step over its own steps "
                         "(predict --model refined, the default)")
    ap.add_argument("--compare", default="bundled", help="a correction network to put beside ('none': no other)")
    ap.add_argument("--split", default="test", choices=["val", "test", "train"])
    ap.add_argument("--held-out", action="store_true",
                    help="only the split's structures with an element held out of training (default: only the others)")
    ap.add_argument("--scf", action="store_true",
                    help="also complete the SCF from the predicted density (iterations and seconds; as predict --scf)")
    ap.add_argument("--scf-tol", type=float, default=ScfSettings.tol, help="--scf: the completion's tolerance")
    ap.add_argument("--mix-last", action=argparse.BooleanOptionalAction, default=ScfSettings.mix_last,
                    help="--scf: mix the last diagonalisation's output in on convergence (ScfSettings.mix_last)")
    ap.add_argument("--prior-history", action=argparse.BooleanOptionalAction, default=ScfSettings.prior_history,
                    help="--scf / --steps: start Pulay's history with the prediction's own steps "
                         "(ScfSettings.prior_history)")
    ap.add_argument("--steps", type=int, default=0,
                    help="also score H after this many completion steps from the predicted density (predict --scf-steps)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    krylov = args.model == "krylov"
    route = args.model if args.model in NAMED_ROUTES else "density"
    select, refine = route == "select", route == "refined"
    model, card = load_model(resolve_model_path("density" if krylov or args.model in NAMED_ROUTES else args.model))
    card = {**card, "name": "krylov-secant (no network)" if krylov else route_name(route, card.get("name"))}
    other = None if args.compare == "none" else load_model(resolve_model_path(args.compare))[0]
    held = set(card["split"].get("held_out_elements", []))
    rows: dict[str, list] = {"density": [], "other": [], "steps": [], "scf": []}
    cost = []
    for sid in sorted(card["split"][args.split]):
        s = read_structure(args.data, sid)
        if bool(set(s.elements) & held) != args.held_out:
            continue
        t = time.perf_counter()
        pred = predict_krylov(s) if krylov else ROUTES[route](model, s)
        h, stages = pred.hamiltonian, dict(pred.timings)
        if krylov:  # its three steps stand where a model's first step and network do
            stages["first_step_and_network_s"] = stages.pop("steps_s")
        if select:  # the second probe with the first step and network; both evaluations where H[ρ] is
            stages["first_step_and_network_s"] += stages.pop("second_probe_s")
            stages["hamiltonian_s"] = stages.pop("evaluations_s")
        if refine:  # the Pulay step (a diagonalisation and H[ρ]) with the prediction's H[ρ]
            stages["hamiltonian_s"] += stages.pop("pulay_step_s")
        seconds = time.perf_counter() - t
        scf = (complete_scf(s, settings=ScfSettings(tol=args.scf_tol, mix_last=args.mix_last,
                                                    prior_history=args.prior_history),
                            start_density=pred.density, consistency=pred.consistency, prior=pred.steps,
                            start_hamiltonian=pred.hamiltonian, start_output=pred.output)
               if args.scf else None)
        if scf is not None:
            rows["scf"].append({"id": sid, "formula": s.formula, "spin": s.spin_mode, **evaluate(s, scf.hamiltonian)})
        steps = None
        if args.steps:
            steps = complete_scf(s, settings=ScfSettings(tol=0.0, max_iter=args.steps, prior_history=args.prior_history),
                                 start_density=pred.density, consistency=pred.consistency, prior=pred.steps,
                                 start_hamiltonian=pred.hamiltonian, start_output=pred.output)
            rows["steps"].append({"id": sid, "formula": s.formula, "spin": s.spin_mode, **evaluate(s, steps.hamiltonian)})
        rows["density"].append({"id": sid, "formula": s.formula, "spin": s.spin_mode, **evaluate(s, h)})
        if other is not None:
            t = time.perf_counter()
            h_other = predict_hamiltonian(other, s)
            other_s = time.perf_counter() - t
            rows["other"].append({"id": sid, "formula": s.formula, "spin": s.spin_mode, **evaluate(s, h_other)})
        meta = s.meta["meta"]
        cost.append({"id": sid, "formula": s.formula, "atoms": s.n_atoms, "density_s": seconds, **stages,
                     "other_s": other_s if other is not None else float("nan"),
                     "abacus_h0_s": float(meta.get("h0_seconds", np.nan)),
                     "abacus_scf_s": float(meta.get("scf_seconds", np.nan)),
                     "abacus_iter": int(meta.get("scf_iterations", -1)),
                     "scf_iter": scf.iterations if scf else -1, "scf_s": scf.seconds if scf else float("nan"),
                     "scf_converged": bool(scf.converged) if scf else None,
                     "steps_s": steps.seconds if steps else float("nan")})
        p, c = rows["density"][-1], cost[-1]
        print(f"{sid} {s.formula:10s} density {p['predicted']['band_mae_shifted_mev']:7.1f} meV "
              f"({p['predicted']['ghost_states']} ghosts)"
              + (f", other {rows['other'][-1]['predicted']['band_mae_shifted_mev']:7.1f}" if other is not None else "")
              + (f", after {args.steps} steps {rows['steps'][-1]['predicted']['band_mae_shifted_mev']:6.2f}" if steps else "")
              + (f", completed ({scf.iterations} it) {rows['scf'][-1]['predicted']['band_mae_shifted_mev']:6.2f}" if scf else "")
              + f", H(0) {p['h0']['band_mae_shifted_mev']:7.1f};  {c['density_s']:.1f} s against ABACUS's SCF "
              f"{c['abacus_scf_s']:.1f} s", flush=True)
    summ = {k: summarise(v) for k, v in rows.items() if v}
    print(f"\n{len(cost)} {args.split} structures{' with a held-out element' if args.held_out else ''}; density model "
          f"{card.get('name')}" + (f", beside {args.compare}" if other is not None else ""))
    print(f"{'metric':<32}{'H(0)':>10}{'density':>10}" + (f"{'other':>10}" if other is not None else "")
          + (f"{f'+{args.steps} steps':>12}" if args.steps else "") + (f"{f'scf {args.scf_tol:g}':>12}" if args.scf else ""))
    for m in METRICS:
        if m in summ["density"]["predicted"]:
            line = f"{m:<32}{summ['density']['h0'].get(m, float('nan')):10.3f}{summ['density']['predicted'][m]:10.3f}"
            if other is not None:
                line += f"{summ['other']['predicted'][m]:10.3f}"
            if args.steps:
                line += f"{summ['steps']['predicted'][m]:12.3f}"
            if args.scf:
                line += f"{summ['scf']['predicted'][m]:12.3f}"
            print(line)
    tot = {k: float(np.nansum([c[k] for c in cost])) for k in
           ("density_s", "grid_setup_s", "first_step_and_network_s", "hamiltonian_s", "other_s", "abacus_h0_s",
            "abacus_scf_s")}
    print(f"\ntotal seconds (one thread): density model {tot['density_s']:.1f} (grid {tot['grid_setup_s']:.1f}, first step "
          f"and network {tot['first_step_and_network_s']:.1f}, "
          + ("both candidates' evaluations" if select else "H[ρ] and the Pulay step" if refine else "H[ρ]")
          + f" {tot['hamiltonian_s']:.1f})"
          + (f", other {tot['other_s']:.1f}" if other is not None else "")
          + f"; ABACUS zeroth step {tot['abacus_h0_s']:.1f}, SCF {tot['abacus_scf_s']:.1f}: the density model takes "
          f"{100 * tot['density_s'] / tot['abacus_scf_s']:.0f}% of the SCF's time")
    if args.steps:
        steps_total = sum(c["steps_s"] for c in cost)
        print(f"{args.steps} completion steps after the prediction: {steps_total:.1f} s; prediction and steps together "
              f"{tot['density_s'] + steps_total:.1f} s, {100 * (tot['density_s'] + steps_total) / tot['abacus_scf_s']:.0f}% "
              f"of ABACUS's SCF time")
    if args.scf:
        scf_total = sum(c["scf_s"] for c in cost)
        print(f"SCF completion from the predicted density to {args.scf_tol:g}: {np.mean([c['scf_iter'] for c in cost]):.1f} "
              f"iterations on average (ABACUS {np.mean([c['abacus_iter'] for c in cost]):.1f}), {scf_total:.1f} s; not "
              f"converged: {sum(not c['scf_converged'] for c in cost)}; prediction and completion together "
              f"{tot['density_s'] + scf_total:.1f} s, {100 * (tot['density_s'] + scf_total) / tot['abacus_scf_s']:.0f}% of "
              f"ABACUS's SCF time")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summ, "rows": rows, "cost": cost, "model": card.get("name")},
                                              indent=1))


if __name__ == "__main__":
    main()
