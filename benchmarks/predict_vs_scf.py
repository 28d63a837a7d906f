"""Read + predict time beside the zeroth-step and SCF wall times ABACUS logged (meta.json, one core).

Read on one thread; predict on one thread (like ABACUS's one core) and on two (the 2-core target
machine); the shortest of --repeat runs after a warm-up. Ratios are (read + predict) / SCF, and the
whole workflow (zeroth step + read + predict) / (zeroth step + SCF). "CLI s" is what a user waits for:
the wall time of the whole `nextham-dft predict` process (Python start, imports, model load, read,
predict, hamiltonian.h5 and ABACUS files) on a copy of the run holding its zeroth step only (so
nothing is evaluated against the SCF), default threads, shortest of --repeat.
Usage: python benchmarks/predict_vs_scf.py [--runs DIR ...] [--repeat 3] [--model PATH|fast]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nextham_dft.model.predict import predict_hamiltonian
from nextham_dft.model.store import load_model, resolve_model_path
from nextham_dft.registry import read_run

HERE = Path(__file__).resolve().parents[1]


def _best_of(fn, repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls (s): the machine's noise only ever adds time."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cli_seconds(run: str, model: str | None, repeat: int) -> float:
    """Shortest wall time (s) of ``repeat`` whole `nextham-dft predict` processes on a copy of ``run``
    without its converged SCF (the ``*.scf`` entries of the shared runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        zeroth = Path(tmp) / Path(run).name
        shutil.copytree(run, zeroth, ignore=shutil.ignore_patterns("*.scf"))
        cmd = [sys.executable, "-m", "nextham_dft", "predict", str(zeroth), "--model", model or "bundled"]
        orbitals = (Path(run) / "../../pp_orb").resolve()  # the shared runs' INPUT points there, relative to the run
        if orbitals.is_dir():
            cmd += ["--orbital-dir", str(orbitals)]
        best = float("inf")
        for k in range(repeat):
            t = time.perf_counter()
            subprocess.run(cmd + ["--out", str(Path(tmp) / f"out{k}")], check=True, capture_output=True,
                           env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    base = HERE.parent / "shared/data/abacus-dojo-fr"
    default = sorted((base / "runs").iterdir()) + sorted(p for p in (base / "supercell").iterdir())
    ap.add_argument("--runs", nargs="+", default=[str(p) for p in default])
    ap.add_argument("--repeat", type=int, default=3, help="Timed repetitions; the shortest is kept.")
    ap.add_argument("--json", default="predict_vs_scf.json")
    ap.add_argument("--model", default=None, help="Model file or 'fast' (default: the bundled correction ensemble, v8).")
    a = ap.parse_args()
    model, _ = load_model(resolve_model_path(a.model))
    rows = []
    print(f"{'run':<16}{'atoms':>6}{'H0 s':>8}{'SCF s':>8}{'read s':>8}{'pred 1t':>9}{'pred 2t':>9}"
          f"{'ratio 1t':>10}{'ratio 2t':>10}{'workflow 1t':>13}{'CLI s':>8}{'CLI/SCF':>9}")
    for run in a.runs:
        meta = json.loads((Path(run) / "meta.json").read_text())
        s = read_run(run, matrices=("H0", "S"))  # what a user's zeroth-step run holds (also warms the imports)
        t_read = _best_of(lambda: read_run(run, matrices=("H0", "S")), a.repeat)
        pred = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            predict_hamiltonian(model, s)  # warm-up
            pred[threads] = _best_of(lambda: predict_hamiltonian(model, s), a.repeat)
        h0, scf = meta["h0_seconds"], meta["scf_seconds"]
        cli = cli_seconds(run, a.model, a.repeat)
        r = {"run": Path(run).name, "atoms": s.n_atoms, "h0_s": h0, "scf_s": scf, "read_s": t_read,
             "predict_1thread_s": pred[1], "predict_2threads_s": pred[2],
             "ratio_1thread": (t_read + pred[1]) / scf, "ratio_2threads": (t_read + pred[2]) / scf,
             "workflow_ratio_1thread": (h0 + t_read + pred[1]) / (h0 + scf), "cli_s": cli, "cli_ratio": cli / scf}
        rows.append(r)
        print(f"{r['run']:<16}{r['atoms']:6d}{h0:8.2f}{scf:8.2f}{t_read:8.2f}{pred[1]:9.2f}{pred[2]:9.2f}"
              f"{r['ratio_1thread']:10.3f}{r['ratio_2threads']:10.3f}{r['workflow_ratio_1thread']:13.3f}"
              f"{cli:8.2f}{cli / scf:9.2f}")
    Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
