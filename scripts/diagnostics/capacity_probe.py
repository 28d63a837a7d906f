"""Capacity probe: how far can the network's architecture fit a few structures, given every step it needs?

Fits a network (the model options of a training config, optionally overridden, from scratch or from a
model file) to the given structures of a dataset with the real-space loss alone, full batch, Adam with
a cosine schedule, and prints every ``--every`` steps each structure's H MAE after its best rigid shift
μS (meV, as `nextham-dft eval` reports it), beside H(0)'s; at the end, where the remaining error sits
(on-site blocks and off-site ones by length, and by the orbitals' l). A model that cannot fit four
structures well below a tenth of H(0)'s error cannot reach that on unseen ones.

Example (session 17): python scripts/diagnostics/capacity_probe.py cfg.yaml DATA.h5 \
    --ids t0044 s0221 s0014 t0083 --steps 400 --set bond_env=true

``--minutes M`` makes the cosine schedule run over M minutes of wall clock instead of ``--steps`` steps
(``--steps`` is then a cap), so that runs on different hardware or of different widths get the same
time; ``--device cuda`` fits on a GPU (``auto``: CUDA when available).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import yaml

from nextham_dft.dataset import iter_dataset
from nextham_dft.model.config import load_train_config
from nextham_dft.evaluation import LENGTH_BINS
from nextham_dft.model.graph import Graph, batch_graphs, build_graph, edge_spans, graph_options
from nextham_dft.model.irreps import BasisLayout
from nextham_dft.model.losses import real_space_loss, rigid_shift, stored_half_weight
from nextham_dft.model.network import HamiltonianCorrection
from nextham_dft.model.train import cosine_lr
from nextham_dft.model.store import load_model, load_weights_into, resolve_model_path, select_member


def entry_weights(g: Graph) -> torch.Tensor:
    """(E, n, n) weight of each existing entry of the directed graph so that sums over it are sums over
    the stored entries that `nextham-dft eval` averages (``stored_half_weight``)."""
    return g.mask * stored_half_weight(g.onsite, g.mask.dtype)[:, None, None]


def _shifted_error(delta: torch.Tensor, g: Graph, sl: slice) -> torch.Tensor:
    """|error| (E, n, n) eV of one structure's correction after its best rigid shift μS, weighted as eval."""
    w = entry_weights(g)[sl]
    d = delta[sl] - g.target[sl]
    mu = rigid_shift(d, g.s[sl], w)  # weighted least squares: Σ w d S / Σ w S²
    return (d - mu * g.s[sl]).abs() * w


def shifted_mae(delta: torch.Tensor, g: Graph, spans: list[slice]) -> np.ndarray:
    """(structures,) MAE (meV) of the spin-free H after each structure's best rigid shift μS, for a
    predicted correction ``delta`` (E, n, n) eV on the batched graph ``g``: eval's h_mae_shifted_mev."""
    return np.array([float(_shifted_error(delta, g, sl).sum() / entry_weights(g)[sl].sum()) * 1e3 for sl in spans])


def error_shares(delta: torch.Tensor, g: Graph, spans: list[slice], layout: BasisLayout) -> dict[str, dict[str, float]]:
    """Shares of the summed |error| after μS over all structures: by block class (on-site, then off-site
    by length in eval's bins: lt3A, 3to6A, ge6A) and by the l of the two orbitals (ss, sp, …)."""
    err = torch.zeros_like(g.target)
    for sl in spans:
        err[sl] = _shifted_error(delta, g, sl)
    total = err.sum()
    r = torch.linalg.norm(g.edge_vec, dim=1)
    classes = {"onsite": g.onsite}  # then off-site blocks by length, in eval's bins
    classes.update({tag: ~g.onsite & (r >= lo) & (r < hi) for lo, hi, tag in LENGTH_BINS})
    by_class = {k: float(err[sel].sum() / total) for k, sel in classes.items()}
    l_of = torch.tensor([l for l, _z, _o in layout.shells for _ in range(2 * l + 1)])
    by_l = {}
    for a in range(4):
        for b in range(a, 4):
            sel = ((l_of[:, None] == a) & (l_of[None, :] == b)) | ((l_of[:, None] == b) & (l_of[None, :] == a))
            by_l["spdf"[a] + "spdf"[b]] = float(err[:, sel].sum() / total)
    return {"class": by_class, "l": by_l}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="training config YAML (its model options are used)")
    ap.add_argument("data", help="dataset file of `nextham-dft dataset build`")
    ap.add_argument("--ids", nargs="+", required=True, help="structure ids to fit")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--init", default=None, help="model file to start from (an ensemble: its first member)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model option overrides (YAML values)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None,
                    help="cosine schedule over this wall-clock time (minutes); --steps is then a cap")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when available)")
    a = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    torch.manual_seed(a.seed)
    cfg = load_train_config(a.config)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    mcfg = dataclasses.replace(cfg.model, **overrides)
    layout = BasisLayout(tuple(tuple(s) for s in mcfg.layout))
    model = HamiltonianCorrection(mcfg)
    if a.init:
        source, _ = load_model(resolve_model_path(a.init))
        load_weights_into(model, select_member(source, 0, a.init))
    systems = list(iter_dataset(a.data, ids=a.ids))
    graphs = [build_graph(s, layout, **graph_options(mcfg))[0] for s in systems]
    g = batch_graphs(graphs).to(device)
    model.to(device)
    spans = edge_spans(graphs)
    h0 = shifted_mae(torch.zeros_like(g.target), g, spans)
    print(f"{len(systems)} structures {[s.meta['id'] for s in systems]}, "
          f"{sum(p.numel() for p in model.parameters())} parameters, device {device}; "
          f"H(0) after μS (meV): {np.round(h0, 3).tolist()}")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, a.steps))
    t0 = time.time()
    budget_s = None if a.minutes is None else 60.0 * a.minutes
    for step in range(a.steps + 1):
        elapsed = time.time() - t0
        last = step == a.steps or (budget_s is not None and elapsed >= budget_s)
        delta, _ = model(g)
        loss = real_space_loss(delta, g.target, g.mask, mcfg.target_scale)
        if step % a.every == 0 or last:
            mae = shifted_mae(delta.detach(), g, spans)
            print(f"step {step:5d} {elapsed:7.0f} s  after μS {mae.mean():.3f} meV  "
                  f"fraction of H(0)'s {np.mean(mae / h0):.3f}  per structure {np.round(mae, 2).tolist()}", flush=True)
        if last:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if budget_s is None:
            sched.step()
        else:  # cosine over the wall clock, as `nextham-dft train`'s budget schedule
            for group in opt.param_groups:
                group["lr"] = cosine_lr(a.lr, (time.time() - t0) / budget_s)
    with torch.no_grad():
        for label, d in (("H(0)", torch.zeros_like(g.target)), ("fit", model(g)[0])):
            shares = error_shares(d, g, spans, layout)
            print(label, "error shares by block:", {k: round(v, 3) for k, v in shares["class"].items()})
            print(label, "error shares by l:", {k: round(v, 3) for k, v in shares["l"].items()})


if __name__ == "__main__":
    main()
