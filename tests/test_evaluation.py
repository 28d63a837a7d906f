"""The eval metrics on a real run: zero for the converged H, blind to a rigid shift, and far states for
a state pushed away from every DFT band."""

from __future__ import annotations

import numpy as np

from nextham_dft.adapters.abacus import read_run
from nextham_dft.evaluation import FAR_EV, LENGTH_BINS, block_lengths, evaluate, summarise

from .conftest import EXAMPLE, need


def test_band_metrics_far_states_and_rigid_shift():
    system = read_run(need(EXAMPLE))
    h0 = system.matrices["H0"]
    h = system.matrices["H"].aligned_to(h0)
    s = system.matrices["S"].aligned_to(h0)
    exact = evaluate(system, h)["predicted"]
    assert exact["band_mae_mev"] < 1e-6 and exact["ghost_states"] == 0 and exact["far_states"] == 0
    shifted = evaluate(system, h.with_data(h.data + 3.0 * s.data))["predicted"]  # H + μS: bands move rigidly
    assert abs(shifted["band_mae_mev"] - 3000.0) < 1.0 and shifted["band_mae_shifted_mev"] < 1e-3
    assert shifted["ghost_states"] == 0 and shifted["far_states"] == 0 and shifted["farthest_state_mev"] < 1e-3
    # raise one on-site s-orbital energy of atom 0 by 3 eV: states leave every DFT band
    edge, row, col = h0.entry_index()
    onsite0 = ((h0.edge_i == 0) & (h0.edge_j == 0) & np.all(h0.R == 0, axis=1))[edge]
    d = h.data.copy()
    d[onsite0 & (row == 0) & (col == 0)] += 3.0
    moved = evaluate(system, h.with_data(d))
    pred = moved["predicted"]
    assert pred["far_states"] > 0 and pred["farthest_state_mev"] > 1e3 * FAR_EV
    assert moved["h0"]["far_states"] == 0 or moved["h0"]["farthest_state_mev"] > 1e3 * FAR_EV
    summ = summarise([{"id": "a", **moved}, {"id": "b", **moved}])["predicted"]
    assert summ["far_states"] == 2 * pred["far_states"] and summ["farthest_state_mev"] == pred["farthest_state_mev"]


def test_h_mae_by_block_length_sees_where_the_error_is():
    """An error put on the blocks longer than 6 Å shows in h_mae_ge6A_mev alone; the bins, weighted
    by their entries, make up the off-site MAE."""
    system = read_run(need(EXAMPLE))
    h0 = system.matrices["H0"]
    h = system.matrices["H"].aligned_to(h0)
    edge, _, _ = h0.entry_index()
    length = block_lengths(system, h0)[edge]
    on = h0.onsite_blocks()[edge]
    far = length >= 6.0
    assert far.any() and (~on & ~far).any()
    got = evaluate(system, h.with_data(h.data + 1e-3 * far))["predicted"]
    assert abs(got["h_mae_ge6A_mev"] - 1.0) < 1e-9
    assert got["h_mae_lt3A_mev"] == got["h_mae_3to6A_mev"] == got["h_mae_onsite_mev"] == 0.0
    ref = evaluate(system, h0)["h0"]
    n = {name: int((~on & (length >= lo) & (length < hi)).sum()) for lo, hi, name in LENGTH_BINS}
    total = sum(ref[f"h_mae_{k}_mev"] * v for k, v in n.items() if v)
    assert abs(total / (~on).sum() - ref["h_mae_offsite_mev"]) < 1e-9
