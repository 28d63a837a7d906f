"""Predict time and peak memory versus cell size, on supercells built exactly from primitive runs.

Each size runs in a fresh subprocess (peak RSS per size), after one warm-up prediction of the primitive cell. Stages: graph build, model, assembly
(padded corrections → block-sparse H), write (hamiltonian.h5), text (the DFT code's own files that
`predict` writes beside it: ABACUS csr H(R) and S(R)). Prints a table, the fitted scaling
exponent over the sizes ≥ 100 atoms, and writes JSON.
On CUDA the model stage runs on the GPU (graph build, assembly and write stay on 2 CPU threads) and the
peak GPU memory of the model stage is reported too.
Usage: python benchmarks/inference_scaling.py [--run DIR] [--cells 1 8 64 216 512] [--device cpu|cuda] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [str(HERE / "examples/abacus-si2"), str(HERE.parent / "shared/data/abacus-dojo-fr/supercell/alp_prim_soc")]


def one(run: str, n: int, device: str, model_path: str | None = None) -> dict:
    import resource

    import h5py
    import torch

    from nextham_dft.core.supercell import make_supercell
    from nextham_dft.dataset import write_system
    from nextham_dft.model.ensemble import members_of
    from nextham_dft.model.predict import (CorrectionMean, member_correction, prediction_graph,
                                          with_potential_matrices)
    from nextham_dft.model.store import load_model, resolve_model_path
    from nextham_dft.registry import adapter_for, read_run

    torch.set_num_threads(2)
    prim = read_run(run)
    a = round(n ** (1 / 3))
    P = np.diag([a, a, max(1, round(n / (a * a)))])
    t = time.perf_counter()
    sc = make_supercell(prim, P)
    sc.matrices.pop("H", None)
    t_super = time.perf_counter() - t
    model, _ = load_model(resolve_model_path(model_path))
    model.to(device)
    cuda = device.startswith("cuda")
    with torch.no_grad():  # warm-up on the primitive cell: first-call costs are not the cell's
        model(prediction_graph(model, prim)[0].to(device))
    t = time.perf_counter()
    g, idx, deferred = prediction_graph(model, sc)  # every input the model needs, as `predict` builds it
    t_graph = time.perf_counter() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    g = g.to(device)
    t_model = t_asm = 0.0
    acc = CorrectionMean()  # as `predict` does: one network at a time, a running mean (ensembles) and spread
    parts, coeffs = [], []  # deferred graphs: the networks' ΔV matrices are integrated together at the end
    for net in members_of(model):
        t = time.perf_counter()
        with torch.no_grad():
            d, s = net(g)
        if cuda:
            torch.cuda.synchronize()
        t_model += time.perf_counter() - t
        t = time.perf_counter()
        part = member_correction(model, sc, idx, d, s)
        if deferred:
            parts.append(part)
            coeffs.append(net.deferred_potential.cpu().numpy())
        else:
            acc.add(part)
        del d, s, part
        t_asm += time.perf_counter() - t
    t = time.perf_counter()
    for part in (with_potential_matrices(model, sc, parts, coeffs) if deferred else []):
        acc.add(part)
    n_edges = len(g.edge_src)
    del g  # as in `predict`: the graph and padded outputs are gone before the files are written
    dm, _spread = acc.mean(), acc.spread()
    del acc
    h0 = sc.matrices["H0"]
    sc.matrices["H"] = h0.with_data(h0.data + dm.data)
    t_asm += time.perf_counter() - t
    t = time.perf_counter()
    out = Path("/tmp") / f"nextham_bench_{n}.h5"
    with h5py.File(out, "w") as f:
        write_system(f.create_group("x"), sc)
    out.unlink()
    t_write = time.perf_counter() - t
    t = time.perf_counter()  # the DFT code's own files, as `predict` writes them (ABACUS: abacus/ H(R), S(R))
    with tempfile.TemporaryDirectory() as tmp:
        adapter_for(run).write_prediction(Path(tmp), sc)
    t_native = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # GiB
    return {"atoms": sc.n_atoms, "edges": n_edges, "spin": sc.spin_mode, "supercell_s": t_super,
            "graph_s": t_graph, "model_s": t_model, "assembly_s": t_asm, "write_s": t_write, "native_s": t_native,
            "predict_s": t_graph + t_model + t_asm, "peak_rss_gib": rss, "device": device,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", nargs="+", default=DEFAULT_RUNS)
    ap.add_argument("--cells", type=int, nargs="+", default=[1, 8, 27, 64, 216, 512])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="inference_scaling.json")
    ap.add_argument("--model", default=None, help="Model file (default: the bundled correction ensemble, v8).")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(one(a.worker[0], int(a.worker[1]), a.worker[2], a.model)))
        return
    rows = []
    print(f"{'run':<16}{'atoms':>6}{'edges':>8}{'graph s':>9}{'model s':>9}{'assem s':>9}{'write s':>9}{'text s':>8}{'predict s':>10}{'peak GiB':>9}" + ("  GPU GiB" if a.device.startswith("cuda") else ""))
    for run in a.run:
        for n in a.cells:
            cmd = [sys.executable, __file__, "--worker", run, str(n), a.device] + (["--model", a.model] if a.model else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{Path(run).name:<16}{n:>6} cells: failed: {res.stderr.strip().splitlines()[-1]}")
                break
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["run"] = Path(run).name
            rows.append(r)
            print(f"{r['run']:<16}{r['atoms']:6d}{r['edges']:8d}{r['graph_s']:9.2f}{r['model_s']:9.2f}{r['assembly_s']:9.2f}"
                  f"{r['write_s']:9.2f}{r.get('native_s', float('nan')):8.2f}{r['predict_s']:10.2f}{r['peak_rss_gib']:9.2f}"
                  + (f"{r['peak_gpu_gib']:9.2f}" if r["peak_gpu_gib"] is not None else ""), flush=True)
    for run in {r["run"] for r in rows}:
        big = [r for r in rows if r["run"] == run and r["atoms"] >= 100]
        if len(big) >= 2:
            x = np.log([r["atoms"] for r in big])
            y = np.log([r["predict_s"] for r in big])
            print(f"{run}: predict time ∝ N^{np.polyfit(x, y, 1)[0]:.2f} (≥ 100 atoms)")
    Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
