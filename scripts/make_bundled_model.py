"""Package a trained model as the bundled one: weights + model card (JSON) with checksums.

Usage: python scripts/make_bundled_model.py TRAIN_OUT_DIR [TRAIN_OUT_DIR ...] TRAINING_DATA.h5
       [--weights best.pt|last.pt] [--pp-orb DIR] [--metrics accuracy.json]
Several training folders (one split, one architecture; e.g. two seeds) make an ensemble whose
correction is their members' average. Writes nextham_dft/model/pretrained/model.pt and model.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import torch

from nextham_dft.dataset import iter_dataset
from nextham_dft.model.store import PRETRAINED, combine_models, load_model, save_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("train_dirs", nargs="+", metavar="TRAIN_OUT_DIR")
    ap.add_argument("data")
    ap.add_argument("--weights", default="best.pt",
                    help="Model file in TRAIN_OUT_DIR to ship: best.pt (default) or last.pt (the last epoch).")
    ap.add_argument("--pp-orb", default=None, help="Folder of the orbital files (for their checksums).")
    ap.add_argument("--metrics", default=None, help="JSON written by benchmarks/accuracy.py.")
    ap.add_argument("--name", default="nextham-dojo-dzp-v3")
    ap.add_argument("--command", default=None, help="The training command(s), when not a single train run.")
    ap.add_argument("--note", default="", help="Free text for the card (lineage, hardware sharing).")
    ap.add_argument("--val-metrics", default=None,
                    help="JSON of benchmarks/accuracy.py --split val: the eval metrics the model was chosen on.")
    ap.add_argument("--total-minutes", type=float, default=None,
                    help="Wall-clock minutes of every stage together (default: the last stage's log).")
    ap.add_argument("--hardware", default="CPU only, 2 cores",
                    help="How the training machine was used, e.g. 'CPU only, 2 cores shared by two runs'.")
    ap.add_argument("--out", default=str(PRETRAINED / "model.pt"),
                    help="Model file to write (default: the default bundled model; pretrained/fast/model.pt, "
                         "pretrained/local/model.pt for the others).")
    a = ap.parse_args()
    tdirs = [Path(t) for t in a.train_dirs]
    tdir = tdirs[0]
    if len(tdirs) == 1:
        model, card = load_model(tdir / a.weights)
    else:
        model, card = combine_models([t / a.weights for t in tdirs])
    split = card["split"]
    train_ids = set(split["train"])
    elements, files, labels, spins = set(), {}, set(), set()
    for s in iter_dataset(a.data, matrices=()):
        if s.meta["id"] not in train_ids:
            continue
        spins.add(s.spin_mode + (" + SOC" if s.soc else ""))
        for b in s.bases:
            elements.add(b.element)
            labels.add(b.label())
            files[b.element] = {"file": b.source, "sha256": b.sha256}
    lasts = [(t / "log.csv").read_text().splitlines()[-1].split(",") for t in tdirs]
    last = lasts[0]
    out = {
        "name": a.name,
        "description": "E(3)-equivariant H(0)-correction transformer (NextHAM method) for ABACUS LCAO runs "
                       "with PseudoDojo FR pseudopotentials and the ABACUS DZP orbitals",
        "basis_family": "abacus-nao",
        "basis_labels": sorted(labels),
        "elements": sorted(elements),
        "held_out_elements": split.get("held_out_elements", []),
        "orbital_files": dict(sorted(files.items())),
        "spin_modes": sorted(spins),
        "data": {"file": Path(a.data).name, "source": "shared/data/abacus-dojo-fr/dataset.h5 via nextham-dft dataset build",
                 "n_train": len(split["train"]), "n_val": len(split["val"]), "n_test": len(split["test"])},
        "split": split,
        "training": {"epochs": int(last[0]), "wall_clock_s": float(last[1]),
                     "total_wall_clock_s": 60.0 * a.total_minutes if a.total_minutes else float(last[1]), "threads": torch.get_num_threads(),
                     "hardware": f"{platform.processor() or platform.machine()}, {a.hardware}",
                     "threads_per_run": (card.get("train_config") or {}).get("threads"),
                     "command": a.command or f"nextham-dft train {tdir / 'config.yaml'}", "note": a.note,
                     "config": card.get("train_config"),
                     "weights": a.weights, "best_epoch": card.get("epoch"), "val": card.get("val"),
                     **({"members": [{**m, "dir": str(t), "epochs": int(ls[0]), "wall_clock_s": float(ls[1])}
                                     for m, t, ls in zip(card["members"], tdirs, lasts)]} if len(tdirs) > 1 else {})},
        "metrics": json.loads(Path(a.metrics).read_text())["summary"] if a.metrics else None,
        "validation_metrics": json.loads(Path(a.val_metrics).read_text())["summary"] if a.val_metrics else None,
    }
    dest = Path(a.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_model(dest, model, out)
    print(json.dumps({k: out[k] for k in ("name", "elements", "basis_labels", "spin_modes")}, indent=1))
    print("sha256", hashlib.sha256(dest.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
