"""K-fold cross-validation of density-model recipes over the training and validation structures of a split:
a larger test of a choice than the validation split's 14 structures (session 27: two losses that validation
could not tell apart were compared over 120 structures this way).

    python scripts/density_recipe/cross_validate.py folds split.json cv [--k 3]
    # per fold k and recipe NAME: train.py samples cv/fold{k}.json cv/NAME{k}.pt ... (the recipe's options)
    python scripts/density_recipe/cross_validate.py eval dataset.h5 cv/fold0.json energy=cv/energy0.pt norm=cv/norm0.pt --json cv/eval0.json
    python scripts/density_recipe/cross_validate.py summary cv/eval0.json cv/eval1.json cv/eval2.json
    # Kohn–Sham steps after each prediction, one row set per mixing (β, Kerker q0 in 1/Å):
    python scripts/density_recipe/cross_validate.py eval ... --steps 2 --mix 0.4:0.8 --mix 0.8:0.8 --json ...
    # also the Krylov secant and each model's residual selection between its prediction and that secant:
    python scripts/density_recipe/cross_validate.py eval ... --select [--steps 2] --json ...

``folds``: the split's train + val ids, sorted, fold k = ids[k::K]; cv/fold{k}.json trains on the others and
validates (keeps the best epoch) on fold k. ``eval``: each structure of the fold's "val" predicted by every
NAME=MODEL (one first step shared; a model's domain guard applies), scored by ``evaluation.evaluate``; with
``--steps N``, also H after N completion steps from that prediction for each ``--mix β:q0`` (rows
"NAME+Nsteps@β:q0").
Existing fold files or an existing --json are refused, not overwritten. ``summary``: per NAME over all folds, the mean and median shifted band MAE (meV), H after μS (meV), ghost and
far states, and the structures worse than H(0) in bands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nextham_dft.core.scf import ScfSettings, SelfConsistency, complete_scf  # noqa: E402
from nextham_dft.dataset import iter_dataset  # noqa: E402
from nextham_dft.errors import NexthamError  # noqa: E402
from nextham_dft.evaluation import evaluate, summarise  # noqa: E402
from nextham_dft.model.density_net import density_sites  # noqa: E402
from nextham_dft.core.krylov import krylov_secant  # noqa: E402
from nextham_dft.model.density_predict import network_coefficients, predicted_density, select_by_residual  # noqa: E402
from nextham_dft.model.density_train import first_step  # noqa: E402
from nextham_dft.model.store import load_model  # noqa: E402


def make_folds(split: dict, k: int) -> list[dict]:
    """K splits {train, val, test: []} whose val parts partition the split's train + val ids (sorted, every k-th)."""
    ids = sorted(set(split["train"]) | set(split["val"]))
    folds = []
    for i in range(k):
        held = ids[i::k]
        out = set(held)
        folds.append({"train": [x for x in ids if x not in out], "val": held, "test": []})
    return folds


def evaluate_fold(data: str, fold: dict, models: dict[str, torch.nn.Module], log=print, steps: int = 0,
                  mixes: tuple[tuple[float, float], ...] = (), select: bool = False,
                  prior_history: bool = False) -> dict[str, list[dict]]:
    """{name: rows}: each structure of ``fold["val"]`` predicted by every model (their configs must share the
    probe step, basis and grid: one first step serves them all); with ``steps`` > 0 also, for each (β, q0) of
    ``mixes``, the H after that many completion steps from each prediction (``core.scf.complete_scf``). With
    ``select``, also the Krylov secant (row "krylov", from the same first step and probe) and, per model, the
    candidate of the two with the smaller residual (row "NAME:select"; ``density_predict.select_by_residual``). With
    ``prior_history``, the steps start Pulay's history with every Kohn–Sham step the prediction took (``ScfSettings.
    prior_history``: a model's first step and probe; the secant's three steps; for a selection those and the other
    candidate's evaluation)."""
    first = next(iter(models.values())).cfg
    if len({(m.cfg.probe, m.cfg.probe_inputs, m.cfg.secant, m.cfg.spacing, m.cfg.sigmas, m.cfg.lmax, m.cfg.ridge,
             m.cfg.bond_sites, m.cfg.bond_factor) for m in models.values()}) > 1:
        raise ValueError("the models' probe steps, Gaussians, sites or grids differ: evaluate them apart")
    if select and first.probe <= 0:
        raise ValueError("--select shares the models' probe step: give models with one")
    names = list(models) + (["krylov"] + [f"{name}:select" for name in models] if select else [])
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for name in names:
        for beta, q0 in (mixes if steps > 0 else ()):
            rows[step_name(name, steps, beta, q0)] = []
    for system in iter_dataset(data, ids=fold["val"]):
        t = time.perf_counter()
        sc = SelfConsistency(system, first.spacing)
        sites, z = density_sites(system, first)
        step = first_step(sc, first, sites)
        scores = []
        starts = {}  # name: (ρ, H[ρ], (ρ_out, E_F) or None, the prediction's earlier steps)
        ks = krylov_secant(sc, first.probe, first=(step.steps[0], step.steps[1])) if select else None
        for name, model in models.items():
            rho = predicted_density(sc, sites, step, network_coefficients(model, step, (sites, z), sc=sc), first)
            if select:
                kept, cands = select_by_residual(sc, {"network": rho, "krylov": ks.density})
                net, kry, c = cands["network"], cands["krylov"], cands[kept]
                other = cands["krylov" if kept == "network" else "network"]
                starts[name] = (rho, net.hamiltonian, (net.output, net.fermi_ev), list(step.steps))
                starts["krylov"] = (ks.density, kry.hamiltonian, (kry.output, kry.fermi_ev), list(ks.steps))
                starts[f"{name}:select"] = (c.density, c.hamiltonian, (c.output, c.fermi_ev),
                                            list(ks.steps) + [(other.density, other.output)])
            else:
                starts[name] = (rho, sc.hamiltonian(rho), None, list(step.steps))
        for name, (rho, h_start, output, prior) in starts.items():
            hams = {name: h_start}
            for beta, q0 in (mixes if steps > 0 else ()):
                cfg = ScfSettings(tol=0.0, max_iter=steps, beta=beta, kerker_q0=q0, prior_history=prior_history)
                hams[step_name(name, steps, beta, q0)] = complete_scf(
                    system, settings=cfg, start_density=rho, consistency=sc, start_hamiltonian=h_start,
                    start_output=output, prior=prior).hamiltonian
            for key, h in hams.items():
                row = {"id": system.meta["id"], "formula": system.formula, "spin": system.spin_mode,
                       **evaluate(system, h)}
                rows[key].append(row)
                scores.append(f"{key} {row['predicted']['band_mae_shifted_mev']:.2f}")
        log(f"{system.meta['id']} {system.formula}: {', '.join(scores)} meV; {time.perf_counter() - t:.1f} s")
    return rows


def step_name(name: str, steps: int, beta: float, q0: float) -> str:
    """The row name of ``steps`` completion steps with mixing β, Kerker q0 after model ``name``'s prediction."""
    return f"{name}+{steps}steps@{beta:g}:{q0:g}"


def parse_mix(text: str) -> tuple[float, float]:
    """'β:q0' → (β, q0): the mixing fraction in (0, 1] and the Kerker wavevector (1/Å, ≥ 0)."""
    try:
        beta, q0 = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the mixing as BETA:Q0, e.g. 0.4:0.8") from None
    if not (0.0 < beta <= 1.0 and q0 >= 0.0):
        raise argparse.ArgumentTypeError(f"{text!r}: β must lie in (0, 1] and q0 be ≥ 0")
    return beta, q0


def summary_lines(rows: dict[str, list[dict]]) -> list[str]:
    """One line per name: the cross-validation metrics over all its rows."""
    out = []
    for name, r in rows.items():
        s = summarise(r)
        bands = [x["predicted"]["band_mae_shifted_mev"] for x in r]
        worse = [x["formula"] for x in r if x["predicted"]["band_mae_shifted_mev"] > x["h0"]["band_mae_shifted_mev"]]
        out.append(f"{name}: {len(r)} structures, shifted bands mean {np.mean(bands):.2f} / median {np.median(bands):.2f} "
                   f"meV (H(0) {s['h0']['band_mae_shifted_mev']:.1f}), H after μS {s['predicted']['h_mae_shifted_mev']:.3f} "
                   f"meV (H(0) {s['h0']['h_mae_shifted_mev']:.3f}), ghost states {s['predicted']['ghost_states']:.0f}, "
                   f"far states {s['predicted']['far_states']:.0f}; worse than H(0): {', '.join(worse) or 'none'}")
    return out


def write_new(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("folds", help="write fold0.json … from a split's train + val")
    f.add_argument("split")
    f.add_argument("out")
    f.add_argument("--k", type=int, default=3)
    e = sub.add_parser("eval", help="score NAME=MODEL pairs on one fold's held-out structures")
    e.add_argument("data")
    e.add_argument("fold")
    e.add_argument("models", nargs="+", help="NAME=MODEL.pt")
    e.add_argument("--json", required=True)
    e.add_argument("--steps", type=int, default=0, help="also score H after this many completion steps")
    e.add_argument("--mix", type=parse_mix, action="append", default=None,
                   help="β:q0 of the steps' mixing (repeatable; default the SCF's own)")
    e.add_argument("--prior-history", action="store_true",
                   help="start the steps' Pulay history with the prediction's own Kohn–Sham steps")
    e.add_argument("--select", action="store_true",
                   help="also the Krylov secant ('krylov') and each model's residual selection ('NAME:select')")
    s = sub.add_parser("summary", help="the metrics over every fold's eval JSON")
    s.add_argument("evals", nargs="+")
    args = ap.parse_args()
    if args.command == "folds":
        if args.k < 2:
            sys.exit(f"error: --k {args.k}: cross-validation needs at least 2 folds")
        out = Path(args.out)
        if any(out.glob("fold*.json")):
            sys.exit(f"error: {out} already holds fold files; give a new folder")
        out.mkdir(parents=True, exist_ok=True)
        for i, fold in enumerate(make_folds(json.loads(Path(args.split).read_text()), args.k)):
            write_new(out / f"fold{i}.json", json.dumps(fold))
        print(f"wrote {args.k} folds to {out}")
    elif args.command == "eval":
        if Path(args.json).exists():
            sys.exit(f"error: {args.json} exists; give a new file")
        if args.steps < 0:
            sys.exit(f"error: --steps {args.steps}: give 0 or more steps")
        pairs = [m.split("=", 1) for m in args.models]
        if any(len(p) != 2 or not p[0] for p in pairs):
            sys.exit("error: give the models as NAME=MODEL.pt")
        try:
            models = {name: load_model(path)[0].double().eval() for name, path in pairs}
            mixes = tuple(args.mix or [(ScfSettings.beta, ScfSettings.kerker_q0)])
            rows = evaluate_fold(args.data, json.loads(Path(args.fold).read_text()), models, steps=args.steps,
                                 mixes=mixes, select=args.select, prior_history=args.prior_history)
        except (ValueError, NexthamError) as exc:
            sys.exit(f"error: {exc}")
        write_new(Path(args.json), json.dumps(rows, default=float))
    else:
        rows: dict[str, list[dict]] = {}
        for path in args.evals:
            for name, r in json.loads(Path(path).read_text()).items():
                rows.setdefault(name, []).extend(r)
        print("\n".join(summary_lines(rows)))


if __name__ == "__main__":
    main()
