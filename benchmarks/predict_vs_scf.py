"""Read + predict time beside the zeroth-step and SCF wall times ABACUS logged (meta.json, one core).

Usage: python benchmarks/predict_vs_scf.py [--runs DIR ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nextham_dft.model.predict import predict_hamiltonian
from nextham_dft.model.store import bundled_model_path, load_model
from nextham_dft.registry import read_run

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    base = HERE.parent / "shared/data/abacus-dojo-fr"
    default = sorted((base / "runs").iterdir()) + sorted(p for p in (base / "supercell").iterdir())
    ap.add_argument("--runs", nargs="+", default=[str(p) for p in default])
    ap.add_argument("--json", default="predict_vs_scf.json")
    a = ap.parse_args()
    torch.set_num_threads(1)  # ABACUS's times are one core
    model, _ = load_model(bundled_model_path())
    rows = []
    print(f"{'run':<16}{'atoms':>6}{'H0 s':>8}{'SCF s':>8}{'read s':>8}{'predict s':>10}{'(read+pred)/SCF':>17}{'(H0+read+pred)/(H0+SCF)':>26}")
    for run in a.runs:
        meta = json.loads((Path(run) / "meta.json").read_text())
        t = time.perf_counter()
        s = read_run(run, matrices=("H0", "S"))  # what a user's zeroth-step run holds
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        predict_hamiltonian(model, s)
        t_pred = time.perf_counter() - t
        h0, scf = meta["h0_seconds"], meta["scf_seconds"]
        r = {"run": Path(run).name, "atoms": s.n_atoms, "h0_s": h0, "scf_s": scf, "read_s": t_read, "predict_s": t_pred,
             "ratio": (t_read + t_pred) / scf, "workflow_ratio": (h0 + t_read + t_pred) / (h0 + scf)}
        rows.append(r)
        print(f"{r['run']:<16}{r['atoms']:6d}{h0:8.2f}{scf:8.2f}{t_read:8.2f}{t_pred:10.2f}{r['ratio']:17.3f}{r['workflow_ratio']:26.3f}")
    Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
