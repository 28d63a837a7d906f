"""Training: split by structure, real + k-space loss, checkpoints/resume, early stopping, time budget, DDP.

Run through ``nextham-dft train CONFIG.yaml`` (one process) or
``torchrun --nproc_per_node N -m nextham_dft.model.train CONFIG.yaml`` (DistributedDataParallel;
NCCL on GPU, gloo on CPU). Rank 0 writes the log and checkpoints.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..dataset import iter_dataset, list_ids
from ..errors import NexthamError
from .config import TrainConfig, dump_yaml, to_dict
from .ema import WeightAverage
from .cache import cached_potential_integrals, potential_cache_path
from .graph import Graph, batch_graphs, build_graph, edge_spans, graph_options
from .losses import KData, build_kdata, kspace_losses, metric_edge_weights, real_space_loss, rigid_shift
from .network import HamiltonianCorrection
from .store import load_model, load_weights_into, save_model, select_member


@dataclass
class Item:
    sid: str
    graph: Graph
    kdata: KData
    elements: tuple[str, ...]


def split_ids(ids: list[str], elements: dict[str, set[str]], cfg: TrainConfig) -> dict[str, list[str]]:
    """Structure-level split with a fixed seed (``split_seed``, else ``seed``); structures holding a
    held-out element all go to 'test'."""
    held = set(cfg.held_out_elements)
    rng = random.Random(cfg.seed if cfg.split_seed is None else cfg.split_seed)
    pool = [i for i in ids if not (elements[i] & held)]
    forced = [i for i in ids if elements[i] & held]
    pool = sorted(pool)
    rng.shuffle(pool)
    n_test = int(round(cfg.test_fraction * len(pool)))
    n_val = int(round(cfg.val_fraction * len(pool)))
    if cfg.val_fraction > 0:
        n_val = max(1, n_val)
    return {"test": sorted(pool[:n_test] + forced), "val": sorted(pool[n_test : n_test + n_val]),
            "train": sorted(pool[n_test + n_val :]), "held_out_elements": sorted(held)}


def cosine_lr(lr: float, frac: float) -> float:
    """The learning rate after a fraction ``frac`` of a cosine schedule from ``lr`` to 0 (frac ≥ 1: 0)."""
    return lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def load_items(path: str, ids: list[str], cfg: TrainConfig, layout, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    cache = (potential_cache_path(path, cfg.model.local_potential, cfg.model.potential_spacing)
             if cfg.model.local_potential is not None else None)
    for system in iter_dataset(path, ids=ids):
        if system.spin_mode == "collinear":
            continue
        opts = graph_options(cfg.model)
        if cfg.model.local_potential is not None:  # slow to compute: kept beside the dataset
            opts["potential_values"] = cached_potential_integrals(cache, system, cfg.model.local_potential,
                                                                  cfg.model.potential_spacing)
        g, idx = build_graph(system, layout, **opts)
        k = system.kpoints.frac if system.kpoints is not None else np.zeros((1, 3))
        sel = rng.choice(len(k), size=min(cfg.k_per_structure, len(k)), replace=False)
        kd = build_kdata(system, idx, layout, k[sel], window_margin=cfg.window_margin,
                         with_xsx=cfg.w_shift is not None)
        items.append(Item(system.meta["id"], g, kd, tuple(sorted(set(system.elements)))))
    return items


def batches(items: list[Item], size: int, rng: random.Random) -> list[list[Item]]:
    """Batches of structures of one spin kind, shuffled."""
    out = []
    for spinor in (False, True):
        group = [it for it in items if it.graph.spinor == spinor]
        rng.shuffle(group)
        out += [group[i : i + size] for i in range(0, len(group), size)]
    rng.shuffle(out)
    return out


def structure_spans(batch: list[Item]) -> list[slice]:
    """The slice of each structure's directed edges in the batched graph of ``batch``."""
    return edge_spans([it.graph for it in batch])


def window_scale(cfg: TrainConfig) -> float | None:
    """eV unit of an absolute band-window loss (``window_reference: absolute``); None: relative to H(0)."""
    return cfg.model.target_scale if cfg.window_reference == "absolute" else None


def step_loss(model, batch: list[Item], cfg: TrainConfig, use_kspace: bool = True) -> tuple[torch.Tensor, dict]:
    dev = next(model.parameters()).device
    g = batch_graphs([it.graph for it in batch]).to(dev)  # items stay on the CPU; one batch at a time on the device
    if cfg.element_dropout > 0 and model.training:
        hide = torch.rand(len(g.z)) < cfg.element_dropout
        g.z = torch.where(hide.to(g.z.device), torch.zeros_like(g.z), g.z)
    delta, spin = model(g)
    scale = cfg.model.target_scale
    spans = structure_spans(batch)
    target, mus = g.target, [None] * len(batch)
    if cfg.w_shift is not None:  # compare ΔH up to each structure's rigid shift μS; |μ| weighed apart
        mus = [rigid_shift(delta[sl] - g.target[sl], g.s[sl], g.mask[sl]) for sl in spans]
        target = g.target + torch.cat([mu * g.s[sl] for mu, sl in zip(mus, spans)])
    weight = metric_edge_weights(g.onsite, g.mask, spans) if cfg.real_weighting == "metric" else None
    lr_ = real_space_loss(delta, target, g.mask, scale, edge_weight=weight)
    loss = cfg.w_real * lr_
    parts = {"real": lr_.item()}
    if cfg.w_shift is not None:
        lmu = torch.stack(mus).abs().mean() / scale
        loss = loss + cfg.w_shift * lmu
        parts["shift"] = lmu.item()
    if use_kspace and (cfg.w_kspace > 0 or cfg.w_window > 0):
        lk, lw, nw = 0.0, 0.0, 0
        for it, sl, mu in zip(batch, spans, mus):
            full, win = kspace_losses(delta[sl], it.kdata.to(dev), window=cfg.w_window > 0, mu=mu,
                                      window_scale=window_scale(cfg))
            lk = lk + full
            if win is not None:
                lw, nw = lw + win, nw + 1
        lk = lk / len(batch)
        if cfg.w_kspace > 0:
            loss = loss + cfg.w_kspace * lk
        parts["kspace"] = lk.item()
        if nw:
            loss = loss + cfg.w_window * lw / nw
            parts["window"] = (lw / nw).item()
    if spin is not None and g.target_spin is not None:
        ls = real_space_loss(spin, g.target_spin, g.mask, cfg.spin_scale)
        loss = loss + cfg.w_spin * ls
        parts["spin"] = ls.item()
    return loss, parts


@torch.no_grad()
def validate(model, items: list[Item], cfg: TrainConfig | None = None) -> dict:
    """MAE (meV) of the corrected H and of H(0) over existing entries of the validation structures,
    and the corrected H's MAE after each structure's best rigid shift μS (val_shifted_mae_mev) with
    the mean |μ| (val_shift_mev); with ``cfg`` also the mean k-space losses (val_kspace, val_window)
    and ``score``, the number that picks best.pt (``cfg.select_on``; with ``w_shift`` set the H MAE
    in it is the shifted one, plus w_shift·|μ|, as in training)."""
    model.eval()
    err = err_s = base = n = mu_sum = 0.0
    ks, ws, nw = 0.0, 0.0, 0
    want_k = cfg is not None and cfg.select_on == "loss"
    split_shift = cfg is not None and cfg.w_shift is not None
    dev = next(model.parameters()).device
    for it in items:
        g = it.graph.to(dev)
        delta, _ = model(g)
        m = g.mask
        mu = rigid_shift(delta - g.target, g.s, m)
        err += float(((delta - g.target).abs() * m).sum())
        err_s += float(((delta - g.target - mu * g.s).abs() * m).sum())
        mu_sum += abs(float(mu))
        base += float((g.target.abs() * m).sum())
        n += float(m.sum())
        if want_k:
            full, win = kspace_losses(delta, it.kdata.to(dev), window=cfg.w_window > 0,
                                      mu=mu if split_shift else None, window_scale=window_scale(cfg))
            ks += float(full)
            if win is not None:
                ws, nw = ws + float(win), nw + 1
    model.train()
    out = {"val_mae_mev": 1e3 * err / max(n, 1), "val_h0_mae_mev": 1e3 * base / max(n, 1),
           "val_shifted_mae_mev": 1e3 * err_s / max(n, 1), "val_shift_mev": 1e3 * mu_sum / max(len(items), 1)}
    h_term = out["val_mae_mev"]
    if split_shift:
        h_term = out["val_shifted_mae_mev"] + cfg.w_shift * out["val_shift_mev"]
    out["score"] = h_term
    if want_k:
        out["val_kspace"] = ks / max(len(items), 1)
        out["val_window"] = ws / max(nw, 1)
        # the training objective on the validation split (smooth-L1 ≈ MAE in target_scale units)
        out["score"] = (cfg.w_real * h_term / (1e3 * cfg.model.target_scale)
                        + cfg.w_kspace * out["val_kspace"] + cfg.w_window * out["val_window"])
    return out


def _dist(device: str) -> tuple[int, int, str, bool]:
    """Rank, world size, this rank's device and whether a process group is up.

    Under torchrun (``WORLD_SIZE`` set, even to 1) the ranks join a process group: NCCL with one GPU
    per local rank (``LOCAL_RANK``) when ``device`` is CUDA, gloo on CPU. Run directly: rank 0 of 1.
    """
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device, False
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device, True


def train(cfg: TrainConfig, init: str | None = None, resume: bool = True, device: str = "cpu",
          progress: bool = True, max_steps: int | None = None, init_member: int | None = None) -> Path:
    """Train (or fine-tune from ``init``; from its network ``init_member`` when ``init`` is an
    ensemble) and return the path of the best model file."""
    if not Path(cfg.data).is_file():
        raise NexthamError(f"{cfg.data}: training data not found (the config's 'data'; make it with "
                           "`nextham-dft dataset build`)")
    rank, world, device, distributed = _dist(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))
    torch.manual_seed(cfg.seed)
    model = HamiltonianCorrection(cfg.model)
    if init:
        src, _card = load_model(init)
        load_weights_into(model, select_member(src, init_member, init))
    model.to(device)
    ids = list_ids(cfg.data)
    elements = {}
    for s in iter_dataset(cfg.data, matrices=()):
        elements[s.meta["id"]] = set(s.elements)
    split = split_ids(ids, elements, cfg)
    train_elements = sorted(set().union(*[elements[i] for i in split["train"]])) if split["train"] else []
    if rank == 0:
        (out / "split.json").write_text(json.dumps(split, indent=1))
    train_items = load_items(cfg.data, split["train"], cfg, model.layout, cfg.seed)
    val_items = load_items(cfg.data, split["val"], cfg, model.layout, cfg.seed + 1)
    if not train_items:
        raise ValueError("no training structures (check the data file and held_out_elements)")
    ddp = model
    if distributed:
        gpu = [torch.device(device).index] if device.startswith("cuda") else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=gpu, find_unused_parameters=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    state = {"epoch": 0, "best": math.inf, "elapsed": 0.0, "bad_epochs": 0, "steps": 0}
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        c = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["opt"])
        state = c["state"]
        if ema is not None and c.get("ema") is not None:
            ema.load_state_dict(c["ema"])
    log_path = out / "log.csv"
    new_log = not log_path.exists() or state["epoch"] == 0
    budget = cfg.budget_minutes * 60.0
    t0 = time.time() - state["elapsed"]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc="train", unit="epoch", file=sys.stderr)

    def card(v: dict) -> dict:
        """What a saved model file (best.pt, last.pt) records of this run at the current epoch."""
        return {"train_config": to_dict(cfg), "epoch": state["epoch"], "val": v, "elapsed_s": state["elapsed"],
                "split": split, "elements": train_elements}

    v = None
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        log = csv.writer(fh)
        if new_log:
            log.writerow(["epoch", "elapsed_s", "lr", "loss", "real", "kspace", "spin", "val_mae_mev", "val_h0_mae_mev",
                          "window", "val_kspace", "val_window", "shift", "val_shifted_mae_mev", "val_shift_mev"])
        while state["epoch"] < cfg.epochs:
            frac = max(state["epoch"] / cfg.epochs, (time.time() - t0) / budget)
            lr = cosine_lr(cfg.lr, frac)
            for gr in opt.param_groups:
                gr["lr"] = lr
            rng = random.Random(cfg.seed * 1000 + state["epoch"])
            bs = batches(train_items, cfg.batch_size, rng)
            if world > 1:
                n = len(bs) // world * world
                bs = bs[rank:n:world]
            sums: dict[str, float] = {}
            for b in bs:
                loss, parts = step_loss(ddp, b, cfg)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                if ema is not None:
                    ema.update(model)
                state["steps"] += 1
                for k, v in {"loss": loss.item(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v / len(bs)
                if max_steps is not None and state["steps"] >= max_steps:
                    break
            state["epoch"] += 1
            state["elapsed"] = time.time() - t0
            with ema.applied(model) if ema is not None else nullcontext():  # validate and save what ships
                v = (validate(model, val_items, cfg) if val_items else
                     {"val_mae_mev": sums.get("loss", 0), "val_h0_mae_mev": 0, "score": sums.get("loss", 0)})
                improved = v["score"] < state["best"]
                if rank == 0 and improved:
                    save_model(out / "best.pt", model, card(v))
            if rank == 0:
                log.writerow([state["epoch"], round(state["elapsed"], 1), f"{lr:.3e}", *(f"{sums.get(k, 0):.5g}" for k in
                              ("loss", "real", "kspace", "spin")), f"{v['val_mae_mev']:.4f}", f"{v['val_h0_mae_mev']:.4f}",
                              f"{sums.get('window', 0):.5g}", f"{v.get('val_kspace', 0):.5g}", f"{v.get('val_window', 0):.5g}",
                              f"{sums.get('shift', 0):.5g}", f"{v.get('val_shifted_mae_mev', 0):.4f}",
                              f"{v.get('val_shift_mev', 0):.4f}"])
                fh.flush()
                if improved:
                    state["best"] = v["score"]
                    state["bad_epochs"] = 0
                else:
                    state["bad_epochs"] += 1
                if state["epoch"] % cfg.checkpoint_every == 0:
                    tmp = ckpt.with_suffix(".tmp")
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                                "ema": None if ema is None else ema.state_dict()}, tmp)
                    os.replace(tmp, ckpt)
                if bar is not None:
                    remaining = max(0.0, budget - state["elapsed"])
                    bar.set_postfix(loss=f"{sums.get('loss', 0):.3g}", val_meV=f"{v['val_mae_mev']:.3f}",
                                    h0_meV=f"{v['val_h0_mae_mev']:.3f}", budget_left=f"{remaining / 60:.0f}m")
                    bar.update(1)
            stop = state["elapsed"] > budget or state["bad_epochs"] >= cfg.patience
            if max_steps is not None and state["steps"] >= max_steps:
                stop = True
            if distributed:
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                torch.distributed.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                break
    if bar is not None:
        bar.close()
    if rank == 0 and v is not None:  # the weights of the last epoch, as validated (averaged when ema_decay > 0)
        with ema.applied(model) if ema is not None else nullcontext():
            save_model(out / "last.pt", model, card(v))
    if distributed:  # for verification: every rank's final weights
        torch.save(model.state_dict(), out / f"final_rank{rank}.pt")
        torch.distributed.barrier()
    return out / "best.pt"


def main(argv: list[str] | None = None) -> None:  # torchrun entry point
    import argparse

    from .config import load_train_config

    ap = argparse.ArgumentParser(prog="python -m nextham_dft.model.train")
    ap.add_argument("config")
    ap.add_argument("--init", default=None)
    ap.add_argument("--member", type=int, default=None, help="With an ensemble as --init: the network to start from.")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available: NCCL, one GPU per rank)")
    a = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    train(load_train_config(a.config), init=a.init, max_steps=a.max_steps, progress=False, device=device,
          init_member=a.member)


if __name__ == "__main__":
    main()
