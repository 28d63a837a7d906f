"""Training speed: seconds per epoch and per optimiser step of a recipe's config, on CPU threads or a GPU.

All structures of --data train (no validation pass, so the time is the training steps'); the set-up
(graphs, k-space data) and the first epoch (warm-up) are reported apart. Prints a table and writes JSON.
Usage: python benchmarks/train_throughput.py --data SUBSET.h5 [--config scripts/fast_recipe/stageB.yaml]
       [--device cpu|cuda] [--threads 2] [--epochs 4] [--batch-size B]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from nextham_dft.dataset import list_ids
from nextham_dft.model.config import load_train_config
from nextham_dft.model.train import train

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="A training file (e.g. a subset of the recipe's dataset.h5).")
    ap.add_argument("--config", default=str(HERE / "scripts/fast_recipe/stageB.yaml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=None, help="Override the config's batch_size.")
    ap.add_argument("--json", default="train_throughput.json")
    a = ap.parse_args()
    cfg = load_train_config(a.config)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(cfg, data=a.data, out_dir=tmp, val_fraction=0.0, test_fraction=0.0,
                                  held_out_elements=[], epochs=a.epochs, budget_minutes=10**6, patience=10**6,
                                  threads=a.threads, batch_size=a.batch_size or cfg.batch_size)
        t = time.perf_counter()
        train(cfg, device=a.device, progress=False, resume=False)
        total = time.perf_counter() - t
        with open(Path(tmp) / "log.csv") as fh:
            elapsed = [float(r["elapsed_s"]) for r in csv.DictReader(fh)]
    n = len(list_ids(a.data))
    steps = math.ceil(n / cfg.batch_size)
    later = [b - e for e, b in zip(elapsed, elapsed[1:])]
    per_epoch = sum(later) / len(later) if later else elapsed[0]
    row = {"device": a.device, "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
           "threads": a.threads, "structures": n, "batch_size": cfg.batch_size, "steps_per_epoch": steps,
           "first_epoch_s": elapsed[0], "epoch_s": per_epoch, "step_s": per_epoch / steps,
           "setup_s": total - elapsed[-1], "config": Path(a.config).name}
    print(f"{'device':<8}{'threads':>8}{'structs':>8}{'steps/ep':>9}{'1st ep s':>9}{'epoch s':>9}{'step s':>8}{'setup s':>9}")
    print(f"{a.device:<8}{a.threads:8d}{n:8d}{steps:9d}{row['first_epoch_s']:9.2f}{per_epoch:9.2f}"
          f"{row['step_s']:8.3f}{row['setup_s']:9.1f}")
    Path(a.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
