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


def test_bundled_card_matches_its_recipe():
    """The card's last-stage config is scripts/fast_recipe/stageB.yaml but for the paths, and every
    recipe file its command names exists, so the recipe README's commands redo the shipped model.
    Both go through the config dataclasses, so options added since the card was written compare at
    their defaults."""
    card = json.loads(bundled_model_path().with_suffix(".json").read_text())
    shipped = to_dict(train_config_from_dict(card["training"]["config"]))
    recipe = to_dict(load_train_config(ROOT / "scripts/fast_recipe/stageB.yaml"))
    for key in ("data", "out_dir"):
        shipped.pop(key), recipe.pop(key)
    assert shipped == recipe
    assert to_dict(model_config_from_dict(card["model_config"])) == recipe["model"]
    named = re.findall(r"scripts/\w+/\w+\.yaml", card["training"]["command"])
    assert named and all((ROOT / p).is_file() for p in named)
