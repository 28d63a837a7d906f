"""Record in a density model's card the metrics of the route the CLI predicts with by default (``cli._density_route``:
"refined", the prediction and one Pulay step), from ``benchmarks/density_model.py --json`` runs.

    python scripts/density_recipe/card_route.py nextham_dft/model/pretrained/density/model.json refined \\
        --val val.json:steps --test test.json:density --held-out sn.json:density --rule "..."

Each JSON is given as FILE:ROW, ROW the benchmark's summary row that holds the route ("density" when the benchmark ran
``--model refined``; "steps" for ``--model density --steps 1 --prior-history``). The card's own val_metrics and
test_metrics (the network alone) are kept; the route's go under ``default_route``. The weights and their checksum are
not touched. The card is rewritten atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def route_metrics(spec: str) -> tuple[dict, dict]:
    """(summary {predicted, h0}, cost {seconds, abacus_scf_seconds, share}) of FILE:ROW."""
    path, _, row = spec.rpartition(":")
    data = json.loads(Path(path).read_text())
    if row not in data["summary"]:
        raise KeyError(f"{path} has no summary row {row!r} (it has {sorted(data['summary'])})")
    cost = data["cost"]
    seconds = sum(c["density_s"] + (c["steps_s"] if row == "steps" else 0.0) for c in cost)
    scf = sum(c["abacus_scf_s"] for c in cost)
    return data["summary"][row], {"seconds_one_thread": seconds, "abacus_scf_seconds": scf, "share_of_scf": seconds / scf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("card")
    ap.add_argument("route", choices=["refined", "select"])
    ap.add_argument("--val", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--held-out", required=True)
    ap.add_argument("--rule", required=True, help="how the route was chosen, one line")
    args = ap.parse_args()
    card_path = Path(args.card)
    card = json.loads(card_path.read_text())
    try:
        entry = {"name": args.route, "chosen_by": args.rule}
        for key, spec in (("val", args.val), ("test", args.test), ("held_out", args.held_out)):
            entry[f"{key}_metrics"], entry[f"{key}_cost"] = route_metrics(spec)
    except (OSError, KeyError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    card["default_route"] = entry
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=1))
    tmp.replace(card_path)
    print(f"{card_path}: default_route {args.route}, test shifted bands "
          f"{entry['test_metrics']['predicted']['band_mae_shifted_mev']:.2f} meV")


if __name__ == "__main__":
    main()
