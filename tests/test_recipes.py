"""The shipped training recipes: every config loads, and the bundled model's card matches its recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nextham_dft.model.config import load_train_config, model_config_from_dict, to_dict, train_config_from_dict
from nextham_dft.model.store import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIGS = sorted((ROOT / "scripts").glob("*_recipe/*.yaml"))


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_config_loads(path):
    cfg = load_train_config(path)
    assert cfg.epochs > 0 and cfg.lr > 0


def _same_but_paths(card_config: dict, recipe: Path) -> None:
    shipped = to_dict(train_config_from_dict(card_config))
    want = to_dict(load_train_config(recipe))
    for key in ("data", "out_dir"):
        shipped.pop(key), want.pop(key)
    assert shipped == want, recipe


def _named_files_exist(command: str) -> list[str]:
    named = re.findall(r"scripts/\w+/\w+\.yaml", command)
    assert named and all((ROOT / p).is_file() for p in named)
    return named


def test_fast_bundled_card_matches_its_recipe():
    """The single-network bundled model ('fast'): its last-stage config is
    scripts/fast_recipe/stageB.yaml but for the paths, and every recipe file its command names
    exists, so the recipe README's commands redo it. Both go through the config dataclasses, so
    options added since the card was written compare at their defaults."""
    card = json.loads(bundled_model_path("fast").with_suffix(".json").read_text())
    _same_but_paths(card["training"]["config"], ROOT / "scripts/fast_recipe/stageB.yaml")
    recipe = to_dict(load_train_config(ROOT / "scripts/fast_recipe/stageB.yaml"))
    assert to_dict(model_config_from_dict(card["model_config"])) == recipe["model"]
    _named_files_exist(card["training"]["command"])


def test_default_bundled_card_matches_its_ensemble_recipe():
    """The default bundled model is an ensemble: member k's last-stage config is
    scripts/ensemble_recipe/member{k}_stageB.yaml but for the paths, the members differ only in
    their seed, share one split, and every recipe file the command names exists."""
    card = json.loads(bundled_model_path().with_suffix(".json").read_text())
    members = card["training"]["members"]
    assert card["n_members"] == len(members) == 2
    for k, m in enumerate(members):
        _same_but_paths(m["train_config"], ROOT / f"scripts/ensemble_recipe/member{k}_stageB.yaml")
        recipe = to_dict(load_train_config(ROOT / f"scripts/ensemble_recipe/member{k}_stageB.yaml"))
        assert to_dict(model_config_from_dict(card["model_config"])) == recipe["model"]
    assert len({m["train_config"]["seed"] for m in members}) == 2
    assert len({m["train_config"]["split_seed"] for m in members}) == 1
    named = _named_files_exist(card["training"]["command"])
    assert {f"scripts/ensemble_recipe/member{k}_stage{s}.yaml" for k in (0, 1) for s in ("A", "A2", "B")} <= set(named)


def test_local_bundled_card_matches_its_recipe():
    """The bundled local-potential network ('local'): its last-stage config is
    scripts/local_potential_recipe/stageB.yaml but for the paths, its model has the head, and every
    recipe stage is named in its command."""
    card = json.loads(bundled_model_path("local").with_suffix(".json").read_text())
    _same_but_paths(card["training"]["config"], ROOT / "scripts/local_potential_recipe/stageB.yaml")
    assert model_config_from_dict(card["model_config"]).local_potential == (0.3, 0.6, 1.2, 2.4)
    named = _named_files_exist(card["training"]["command"])
    assert {f"scripts/local_potential_recipe/stage{s}.yaml" for s in ("A", "A2", "B")} <= set(named)


def test_card_route_records_a_route_from_benchmark_runs(tmp_path):
    """scripts/density_recipe/card_route.py: the named summary row of each benchmark JSON goes under default_route,
    with the seconds (the steps' too for a "steps" row) over ABACUS's; the rest of the card is kept; a missing row is
    a one-line error that leaves the card as it was."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    card = tmp_path / "model.json"
    card.write_text(json.dumps({"name": "m", "sha256": "abc", "test_metrics": {"predicted": {"x": 1.0}}}))

    def bench(path, rows):
        summary = {row: {"predicted": {"band_mae_shifted_mev": v}, "h0": {"band_mae_shifted_mev": 100.0}}
                   for row, v in rows.items()}
        cost = [{"density_s": 2.0, "steps_s": 1.0, "abacus_scf_s": 20.0}, {"density_s": 4.0, "steps_s": 3.0,
                                                                           "abacus_scf_s": 40.0}]
        path.write_text(json.dumps({"summary": summary, "cost": cost, "rows": {}, "model": "m"}))
        return str(path)

    val = bench(tmp_path / "val.json", {"density": 9.0, "steps": 3.0})
    test = bench(tmp_path / "test.json", {"density": 4.5})
    script = str(root / "scripts" / "density_recipe" / "card_route.py")
    base = [sys.executable, script, str(card), "refined", "--rule", "r"]
    bad = subprocess.run(base + ["--val", f"{val}:nope", "--test", f"{test}:density", "--held-out", f"{test}:density"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "default_route" not in json.loads(card.read_text())
    ok = subprocess.run(base + ["--val", f"{val}:steps", "--test", f"{test}:density", "--held-out", f"{test}:density"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(card.read_text())
    route = out["default_route"]
    assert out["sha256"] == "abc" and out["test_metrics"] == {"predicted": {"x": 1.0}}
    assert route["name"] == "refined" and route["val_metrics"]["predicted"]["band_mae_shifted_mev"] == 3.0
    assert route["val_cost"]["seconds_one_thread"] == pytest.approx(10.0)  # 2 + 1 + 4 + 3
    assert route["test_cost"]["seconds_one_thread"] == pytest.approx(6.0) and route["test_cost"]["share_of_scf"] == pytest.approx(0.1)
