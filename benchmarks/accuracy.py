"""Accuracy of trained models on the held-out test split, beside the H(0) baseline (the `eval` table).

Rows: the bundled (or given) model, the ablation trained without the k-space loss, H(0). ``--model refined`` (or
``select``, and ``--compare LABEL=refined``) scores the bundled density model by that route of ``predict``
(``density_predict.ROUTES``; 'refined' is predict's default where the density model serves; DATA then needs the
atomic densities of ``nextham-dft dataset build``).
Usage: python benchmarks/accuracy.py DATA.h5 [--model PATH] [--ablation PATH] [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nextham_dft.dataset import iter_dataset, list_ids
from nextham_dft.evaluation import evaluate, summarise
from nextham_dft.model.density_predict import NAMED_ROUTES, ROUTES
from nextham_dft.model.predict import predict_hamiltonian
from nextham_dft.model.store import bundled_model_path, load_model, resolve_model_path

KEYS = ["h_mae_mev", "h_mae_onsite_mev", "h_mae_offsite_mev", "h_mae_shifted_mev", "soc_mae_uev", "band_mae_mev",
        "band_mae_shifted_mev", "ghost_states", "far_states", "farthest_state_mev", "h_mae_median_mev", "band_mae_shifted_median_mev",
        "structures_better_than_h0_bands"]


def run(model_path: str, data: str, split: str, held_only: bool = False) -> tuple[dict, list, float]:
    route = model_path if model_path in NAMED_ROUTES else None
    model, card = load_model(resolve_model_path("density" if route else model_path))
    ids = set(card["split"][split]) if split != "all" else set(list_ids(data))
    held = set(card["split"].get("held_out_elements", []))
    ids &= set(list_ids(data))
    if not ids:
        raise SystemExit(f"{data}: holds none of the structures of the model's '{split}' split")
    rows, t = [], time.perf_counter()
    for s in iter_dataset(data, ids=sorted(ids)):
        if held_only and not (set(s.elements) & held):
            continue
        if not held_only and (set(s.elements) & held):
            continue
        rows.append({"id": s.meta["id"], "formula": s.formula, "spin": s.spin_mode,
                     **evaluate(s, ROUTES[route](model, s).hamiltonian if route else predict_hamiltonian(model, s))})
    return summarise(rows), rows, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--model", default=str(bundled_model_path()))
    ap.add_argument("--ablation", default=None, help="Model trained without the k-space loss.")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH",
                    help="Another model to put beside (repeatable), e.g. 'w_kspace 0.1=runs/a/best.pt'.")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", default="accuracy.json")
    a = ap.parse_args()
    summ, rows, dt = run(a.model, a.data, a.split)
    table = {"model": summ["predicted"], "H(0)": summ["h0"]}
    out = {"summary": summ, "structures": rows, "seconds": dt}
    if a.ablation:
        s2, r2, _ = run(a.ablation, a.data, a.split)
        table["no k-space loss"] = s2["predicted"]
        out["ablation_summary"] = s2
    for item in a.compare:
        label, _, path = item.partition("=")
        s3, _r3, _ = run(path, a.data, a.split)
        table[label] = s3["predicted"]
        out.setdefault("compare", {})[label] = s3
    held_summ, held_rows, _ = run(a.model, a.data, a.split, held_only=True)
    if held_rows:
        table["model, held-out element"] = held_summ["predicted"]
        table["H(0), held-out element"] = held_summ["h0"]
        out["held_out"] = {"summary": held_summ, "structures": held_rows}
    names = list(table)
    print(f"{len(rows)} {a.split} structures (+{len(held_rows)} with the held-out element)")
    print(f"{'metric':<22}" + "".join(f"{n:>26}" for n in names))
    for k in KEYS:
        print(f"{k:<22}" + "".join(f"{table[n].get(k, float('nan')):26.4f}" for n in names))
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
