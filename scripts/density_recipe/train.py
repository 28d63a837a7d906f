"""Train the density network on samples from make_samples.py, split by the bundled models' split file.

    python scripts/density_recipe/train.py SAMPLES_DIR SPLIT.json OUT.pt [--seed 0] [--epochs 300]

Writes OUT.pt (+ OUT.json model card: elements, split, recipe, history, training time and machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nextham_dft.model.density_net import PROBE_INPUTS, SECANTS, DensityConfig  # noqa: E402
from nextham_dft.model.density_train import (  # noqa: E402
    LOSSES, DensitySample, DensityTraining, coefficient_input_ratio, train_density)
from nextham_dft.model.store import save_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_samples import widths  # noqa: E402


def load_samples(folder: Path, ids: list[str], r_max: float | None = None) -> list[DensitySample]:
    """The samples of ``ids`` found in ``folder``; with ``r_max`` (Å), their graphs cut to that radius."""
    out = []
    for i in ids:
        if not (folder / f"{i}.pt").exists():
            continue
        d = torch.load(folder / f"{i}.pt")
        if r_max is not None:
            keep = d["vec"].norm(dim=1) < r_max
            d["src"], d["dst"], d["vec"] = d["src"][keep], d["dst"][keep], d["vec"][keep]
        out.append(DensitySample(**d))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("split")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lmax", type=int, default=2)
    ap.add_argument("--bond-sites", action="store_true",
                    help="Gaussians at the bond midpoints too (DensityConfig.bond_sites); samples and network must agree")
    ap.add_argument("--probe", type=float, default=0.0,
                    help="DensityConfig.probe: a second input from a probe step at ρ_atoms + PROBE·Δρ1 (0: none); "
                         "samples and network must agree")
    ap.add_argument("--probe-inputs", choices=PROBE_INPUTS, default="response",
                    help="DensityConfig.probe_inputs; the samples' (make_samples.py --probe-inputs) must match")
    ap.add_argument("--secant", choices=SECANTS, default="projection",
                    help="DensityConfig.secant: how the secant factor is set; samples and network must agree")
    ap.add_argument("--sigmas", type=widths, default=DensityConfig.sigmas,
                    help="Gaussian widths (Å), comma-separated; the samples' and the network's must match")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decay (0: Adam)")
    ap.add_argument("--ema", type=float, default=0.0, help="validate and keep the weights' moving average with this decay per step")
    ap.add_argument("--loss", choices=LOSSES, default="energy", help="DensityTraining.loss")
    ap.add_argument("--screening", action="store_true", help="DensityConfig.screening")
    ap.add_argument("--linear-response", action="store_true", help="DensityConfig.linear_response")
    ap.add_argument("--r-max", type=float, default=DensityConfig.r_max,
                    help="the network's cutoff (Å); the samples' graphs (made at 6 Å) are cut to it")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    split = json.loads(Path(args.split).read_text())
    folder = Path(args.samples)
    if args.probe < 0:
        sys.exit(f"error: --probe {args.probe}: give a step fraction > 0, or 0 for none")
    if args.loss == "secant-log" and args.probe <= 0:
        sys.exit("error: --loss secant-log compares with the secant density: it needs --probe")
    if not 0 < args.r_max <= DensityConfig.r_max:
        sys.exit(f"error: --r-max {args.r_max}: the samples' graphs reach {DensityConfig.r_max} Å; give a cutoff in (0, "
                 f"{DensityConfig.r_max}]")
    train, val = load_samples(folder, split["train"], args.r_max), load_samples(folder, split["val"], args.r_max)
    print(f"{len(train)} training and {len(val)} validation structures", flush=True)
    cfg = DensityConfig(lmax=args.lmax, sigmas=args.sigmas, screening=args.screening, bond_sites=args.bond_sites,
                        linear_response=args.linear_response, r_max=args.r_max, probe=args.probe,
                        probe_inputs=args.probe_inputs, secant=args.secant)
    made = {tuple(s.c1.shape[1:]) for s in train + val}
    bonds = {bool((s.z < 0).any()) for s in train + val}
    if bonds != {args.bond_sites}:
        sys.exit("error: the samples were made " + ("with" if True in bonds else "without") + " bond sites; pass "
                 "make_samples.py's --bond-sites to both or to neither")
    if made != {(cfg.inputs * cfg.basis.per_atom,)}:
        sys.exit(f"error: the samples hold {sorted(made)} coefficients per atom; --lmax {args.lmax} --sigmas "
                 f"{','.join(map(str, cfg.sigmas))} --probe {args.probe} gives {cfg.inputs * cfg.basis.per_atom}: pass "
                 "make_samples.py's --lmax, --sigmas and --probe")
    kinds = {s.probe_inputs for s in train + val}
    if args.probe > 0 and kinds != {args.probe_inputs}:
        sys.exit(f"error: the samples' probe inputs are {', '.join(sorted(kinds))}, not {args.probe_inputs}: pass the same "
                 "--probe-inputs to make_samples.py and train.py")
    secants = {s.secant for s in train + val}
    if args.probe > 0 and secants != {args.secant}:
        sys.exit(f"error: the samples' secant factor is by {', '.join(sorted(secants))}, not {args.secant}: pass the "
                 "same --secant to make_samples.py and train.py")
    if cfg.probe > 0:  # the network's domain: beyond its training set's largest input ratio it is left out
        cfg = dataclasses.replace(cfg, input_ratio_max=max(coefficient_input_ratio(s) for s in train))
    settings = DensityTraining(epochs=args.epochs, lr=args.lr, seed=args.seed, weight_decay=args.weight_decay,
                               ema_decay=args.ema, loss=args.loss)
    t0 = time.perf_counter()
    model, info = train_density(cfg, train, val, settings, log=lambda m: print(m, flush=True))
    minutes = (time.perf_counter() - t0) / 60
    from pymatgen.core.periodic_table import Element

    elements = sorted({Element.from_Z(int(z)).symbol for s in train for z in s.z if int(z) > 0})
    what = "relative error" if args.loss == "energy" else f"{args.loss} loss"  # what the best epoch was kept by
    card = {"name": Path(args.out).stem, "kind": "density", "elements": elements, "split": split,
            "recipe": " ".join(["python"] + sys.argv), "training_minutes": round(minutes, 1),
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
            f"best_val_{what.replace(' ', '_').replace('-', '_')}": info["best_val"], "history": info["history"],
            "training": settings.__dict__}
    save_model(args.out, model, card)
    print(f"wrote {args.out}: best validation {what} {info['best_val']:.4f}, {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
