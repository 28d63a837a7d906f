"""Is a trained network's band-window loss memorised per k-point or per structure?

Mean k-space and band-window losses (as in training: relative to H(0)'s, or in eV with
``window_reference: absolute``) of a training run's network on its first N training structures at the
k-points it trained on, on the same structures at other k-points, and on its validation structures.

Usage: python scripts/diagnostics/window_generalisation.py RUN_DIR [--weights best.pt] [-n 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from nextham_dft.model.config import TrainConfig, load_train_config
from nextham_dft.model.store import load_model
from nextham_dft.model.train import Item, load_items, validate


def mean_losses(model, items: list[Item], cfg: TrainConfig) -> tuple[float, float]:
    """(mean k-space loss, mean band-window loss) of ``model`` over ``items``, as training's validation
    computes them (the window loss is computed even where the run did not train on it)."""
    out = validate(model, items, dataclasses.replace(cfg, select_on="loss", w_window=max(cfg.w_window, 1.0)))
    return out["val_kspace"], out["val_window"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--weights", default="best.pt")
    ap.add_argument("-n", type=int, default=40, help="training structures to score")
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg = load_train_config(run / "config.yaml")
    split = json.loads((run / "split.json").read_text())
    model, _ = load_model(run / a.weights)
    model.eval()
    train_ids = split["train"][: a.n]  # load_items draws k-points structure by structure: the same draw
    cases = (("training structures, training k", train_ids, cfg.seed),
             ("training structures, other k", train_ids, cfg.seed + 100),
             ("validation structures", split["val"], cfg.seed + 1))
    for label, ids, seed in cases:
        ks, ws = mean_losses(model, load_items(cfg.data, ids, cfg, model.layout, seed), cfg)
        print(f"{label:34s} k-space {ks:7.3f}   band window {ws:6.3f}", flush=True)


if __name__ == "__main__":
    main()
