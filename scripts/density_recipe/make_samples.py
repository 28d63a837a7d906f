"""Training data of the density network: one torch file per structure of a `dataset build` file whose
structures hold H0, H, S and the pseudopotentials' atomic densities (model.density_train.make_sample).

    python scripts/density_recipe/make_samples.py DATA.h5 OUT_DIR [--part K/N] [--lmax 2]

About 2 s per structure of the bundled data on one core; existing files are kept (resumable).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nextham_dft.dataset import iter_dataset, list_ids  # noqa: E402
from nextham_dft.model.density_net import PROBE_INPUTS, SECANTS, DensityConfig  # noqa: E402
from nextham_dft.model.density_train import make_sample  # noqa: E402


def widths(text: str) -> tuple[float, ...]:
    """``--sigmas`` parsed: comma-separated Gaussian widths (Å), positive and increasing."""
    try:
        s = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sigmas wants comma-separated widths in Å, got {text!r}") from None
    if not s or min(s) <= 0 or any(b <= a for a, b in zip(s, s[1:])):
        raise argparse.ArgumentTypeError(f"--sigmas wants positive, increasing widths in Å, got {text!r}")
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--part", default="0/1", help="K/N: every N-th structure from the K-th (parallel runs)")
    ap.add_argument("--lmax", type=int, default=2)
    ap.add_argument("--bond-sites", action="store_true",
                    help="Gaussians at the bond midpoints too (DensityConfig.bond_sites); samples and network must agree")
    ap.add_argument("--probe", type=float, default=0.0,
                    help="DensityConfig.probe: a second input from a probe step at ρ_atoms + PROBE·Δρ1 (0: none); "
                         "samples and network must agree")
    ap.add_argument("--probe-inputs", choices=PROBE_INPUTS, default="response",
                    help="DensityConfig.probe_inputs: the probe's response itself, or the secant density's part beyond "
                         "uniform screening; samples and network must agree")
    ap.add_argument("--secant", choices=SECANTS, default="projection",
                    help="DensityConfig.secant: how the secant factor is set; samples and network must agree")
    ap.add_argument("--sigmas", type=widths, default=DensityConfig.sigmas,
                    help="Gaussian widths (Å), comma-separated; the samples' and the network's must match")
    args = ap.parse_args()
    k, n = (int(x) for x in args.part.split("/"))
    if args.probe < 0:
        sys.exit(f"error: --probe {args.probe}: give a step fraction > 0, or 0 for none")
    cfg = DensityConfig(lmax=args.lmax, sigmas=args.sigmas, bond_sites=args.bond_sites, probe=args.probe,
                        probe_inputs=args.probe_inputs, secant=args.secant)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [i for i in list_ids(args.data)[k::n] if not (out / f"{i}.pt").exists()]
    for system in iter_dataset(args.data, ids=ids):
        sid = system.meta["id"]
        t = time.perf_counter()
        try:
            sample = make_sample(system, cfg, sid)
        except Exception as exc:  # noqa: BLE001 - one structure's failure is reported, the rest go on
            print(f"{sid}: failed ({type(exc).__name__}: {exc})", flush=True)
            continue
        tmp = out / f"{sid}.pt.tmp"
        torch.save(sample.__dict__, tmp)
        tmp.replace(out / f"{sid}.pt")
        print(f"{sid} {system.formula} {system.n_atoms} atoms {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
