"""Package a density model trained by train.py as the bundled `--model density`: its card completed with the
pseudopotential files (checksums) and spin modes of its training structures, the whole recipe, the
validation and test metrics.

    python scripts/density_recipe/bundle.py density0.pt [density1.pt ...] dataset.h5 [--val acc_val.json] [--test acc_test.json]
        [--samples-minutes 4] [--samples DIR] [--out nextham_dft/model/pretrained/density/model.pt]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nextham_dft.model.density_net import DensityConfig, density_members  # noqa: E402
from nextham_dft.model.density_train import coefficient_input_ratio  # noqa: E402
from nextham_dft.model.store import PRETRAINED, combine_models, load_model, save_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import load_samples  # noqa: E402


def training_inputs(data: str, ids: list[str]) -> tuple[dict, list[str]]:
    """({element: {file, sha256}} of the pseudopotentials, sorted spin modes) of the structures ``ids``."""
    pps: dict[str, dict] = {}
    spins = set()
    with h5py.File(data, "r") as f:
        for sid in ids:
            g = f[sid]
            spins.add(g.attrs["spin_mode"] if isinstance(g.attrs["spin_mode"], str) else g.attrs["spin_mode"].decode())
            for key in g.get("atomic_density", {}):
                info = json.loads(g["atomic_density"][key].attrs["info"])
                pps[info["element"]] = {"file": info["source"], "sha256": info["sha256"], "functional": info["functional"]}
    return dict(sorted(pps.items())), sorted(spins)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="train.py's model file(s), several: their average ships; then the data")
    ap.add_argument("--val", default=None, help="benchmarks/accuracy.py --split val JSON")
    ap.add_argument("--test", default=None, help="benchmarks/accuracy.py or density_model.py --split test JSON")
    ap.add_argument("--samples-minutes", type=float, default=0.0, help="wall-clock minutes of make_samples.py")
    ap.add_argument("--samples", default=None,
                    help="make_samples.py's folder: set the domain (DensityConfig.input_ratio_max) of members trained "
                         "before train.py recorded it, from the training split's samples")
    ap.add_argument("--name", default="nextham-dojo-density5")
    ap.add_argument("--out", default=str(PRETRAINED / "density" / "model.pt"))
    args = ap.parse_args()
    *paths, args.data = args.models
    if not paths:
        ap.error("give the model file(s) and the dataset")
    cards = [load_model(p)[1] for p in paths]
    model, card = combine_models(paths) if len(paths) > 1 else load_model(paths[0])
    card = {**cards[0], **{k: v for k, v in card.items() if k == "members"}}
    train_ids = card["split"]["train"]
    pps, spins = training_inputs(args.data, train_ids)
    minutes = sum(c.get("training_minutes", 0.0) for c in cards) + args.samples_minutes
    cfg = model.cfg
    if args.samples and cfg.probe > 0 and not cfg.input_ratio_max:
        samples = load_samples(Path(args.samples), train_ids)
        cfg = dataclasses.replace(cfg, input_ratio_max=max(coefficient_input_ratio(s) for s in samples))
        for m in density_members(model):
            m.cfg = cfg
        model.cfg = cfg
    basis = f"--lmax {cfg.lmax}" + ("" if tuple(cfg.sigmas) == DensityConfig.sigmas else
                                    " --sigmas " + ",".join(f"{s:g}" for s in cfg.sigmas))
    basis += " --bond-sites" if cfg.bond_sites else ""
    basis += f" --probe {cfg.probe:g}" if cfg.probe > 0 else ""
    basis += f" --probe-inputs {cfg.probe_inputs}" if cfg.probe > 0 and cfg.probe_inputs != "response" else ""
    basis += f" --secant {cfg.secant}" if cfg.probe > 0 and cfg.secant != "projection" else ""
    samples_cmd = " & ".join(f"python scripts/density_recipe/make_samples.py dataset.h5 samples {basis} --part {k}/2"
                             for k in (0, 1))
    train_cmds = []
    for k, c in enumerate(cards):
        tokens = c.get("recipe", "").split()
        if len(tokens) >= 5 and tokens[1].endswith("train.py"):  # the machine's own paths → the recipe's names
            tokens[2], tokens[4] = "samples", f"density{k}.pt" if len(cards) > 1 else "density.pt"
        train_cmds.append(" ".join(tokens))
    if len(cards) > 1:
        train_cmds.append("nextham-dft ensemble " + " ".join(f"density{k}.pt" for k in range(len(cards)))
                          + " -o density.pt")
    train_cmd = "; ".join(train_cmds)
    new = {k: v for k, v in card.items() if k not in ("sha256", "n_parameters", "model_config", "n_members")}
    new.update({
        "name": args.name,
        "basis": "any NAO basis: H is built in the run's own orbitals by core.scf",
        "pseudopotential_files": pps,
        "spin_modes": spins,
        "data": "../shared/data/abacus-dojo-fr (PseudoDojo FR pseudopotentials, DZP orbitals)",
        "training": {"command": f"nextham-dft dataset build ../shared/data/abacus-dojo-fr/dataset.h5 -o dataset.h5; "
                                f"{samples_cmd}; {train_cmd}",
                     "total_wall_clock_s": round(60 * minutes), "hardware": card.get("hardware", ""),
                     **card.get("training", {})},
    })
    for key, path in (("val_metrics", args.val), ("test_metrics", args.test)):
        if path:
            summary = json.loads(Path(path).read_text())["summary"]
            new[key] = summary.get("density", summary)  # benchmarks/density_model.py's, or accuracy.py's
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, model, new)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
