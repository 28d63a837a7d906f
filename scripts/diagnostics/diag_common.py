"""Shared helpers of the diagnostics: a model's split, its predictions, and spin-free parts of entries."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

from nextham_dft.core.blocks import BlockSparse, ab_to_spinor
from nextham_dft.core.system import System
from nextham_dft.dataset import iter_dataset
from nextham_dft.evaluation import spin_parts
from nextham_dft.model.predict import predict_hamiltonian
from nextham_dft.model.store import load_model, resolve_model_path


def split_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments every split-wide diagnostic takes: DATA.h5, --model (default: bundled), --split."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("data", help="dataset file of `nextham-dft dataset build`")
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--split", default="val", help="split of the model card: train, val or test")
    return ap


def split_systems(model_path: str | None, data: str, split: str) -> Iterator[tuple[System, BlockSparse]]:
    """(system, predicted H aligned to H(0)) for the model card's ``split``, held-out elements left out."""
    model, card = load_model(resolve_model_path(model_path))
    held = set(card["split"].get("held_out_elements", []))
    for system in iter_dataset(data, ids=card["split"][split]):
        if set(system.elements) & held:
            continue
        yield system, predict_hamiltonian(model, system).aligned_to(system.matrices["H0"])


def spin_free(m: BlockSparse, data: np.ndarray) -> np.ndarray:
    """Real spin-free part (nnz,) of entries laid out as ``m``'s (eV)."""
    return spin_parts(m.with_data(data))[0]


def with_spin_free(m: BlockSparse, base: np.ndarray, a: np.ndarray) -> BlockSparse:
    """``m``'s pattern holding ``base`` plus a spin-free change ``a`` (nnz,) (spin part unchanged)."""
    if m.spin == "spinor":
        return m.with_data(base + ab_to_spinor(a, np.zeros(a.shape + (3,))))
    return m.with_data(base + a)
