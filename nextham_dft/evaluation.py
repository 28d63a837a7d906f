"""Accuracy metrics of a predicted Hamiltonian against the converged one, beside the H(0) baseline.

All energies in meV (SOC part in μeV). Band metrics at the DFT run's k-points, for the bands in the
window from 2 eV below the valence-band maximum to 2 eV above the conduction-band minimum
(metals: ±2 eV around E_F), absolute and with the rigid shift removed. Ghost states: Σ_k
max(0, N_pred(k) − N_DFT(k)) over eigenvalues in the window widened by 1 eV, counted after
removing the rigid shift (so that a uniform shift alone never counts as a ghost). That count also
includes real bands that the prediction moves across the widened window's edge, so beside it:
far states, the predicted states in the widened window farther than ``FAR_EV`` from every DFT state
at their k (spurious eigenvalues, or states moved by more than that), and the largest such distance.
"""

from __future__ import annotations

import numpy as np

from .core.blocks import BlockSparse, spinor_to_ab
from .core.kspace import band_energies
from .core.system import System

#: eV: a predicted state farther than this from every DFT state at its k counts as a far state
FAR_EV = 0.5

#: Å: bounds of the block-length bins of the off-site H MAE (h_mae_lt3A_mev, h_mae_3to6A_mev, h_mae_ge6A_mev)
LENGTH_BINS = ((0.0, 3.0, "lt3A"), (3.0, 6.0, "3to6A"), (6.0, float("inf"), "ge6A"))


def block_lengths(system: System, m: BlockSparse) -> np.ndarray:
    """Å (E,): |τ_j + R·A − τ_i| of every stored block of m."""
    return np.linalg.norm(system.bond_vectors(m.edge_i, m.edge_j, m.R), axis=1)


def nearest_distance(e: np.ndarray, e_ref: np.ndarray) -> np.ndarray:
    """eV (nk, nb): |e[k, n] − the nearest e_ref[k, :]|. A binary search per state, so big cells never
    build an (nk, nb, nb_ref) array."""
    out = np.empty(e.shape)
    for k in range(len(e)):
        ref = np.sort(e_ref[k])
        i = np.clip(np.searchsorted(ref, e[k]), 1, len(ref) - 1)
        out[k] = np.minimum(np.abs(e[k] - ref[i - 1]), np.abs(e[k] - ref[i]))
    return out


def spin_parts(m: BlockSparse) -> tuple[np.ndarray, np.ndarray | None]:
    """Spin-free part (nnz,) and spin part (nnz, 3) (None without spinors) of a Hamiltonian's entries."""
    if m.spin == "spinor":
        return spinor_to_ab(m.data)
    return m.data.real if np.iscomplexobj(m.data) else m.data, None


def band_window(eigs: np.ndarray, nelec: float, degeneracy: float, fermi: float) -> tuple[float, float, bool]:
    """(low, high, is_insulator) energy window of the band metrics."""
    nocc = nelec / degeneracy
    if abs(nocc - round(nocc)) < 1e-6 and 0 < round(nocc) < eigs.shape[1]:
        n = int(round(nocc))
        vbm, cbm = eigs[:, n - 1].max(), eigs[:, n].min()
        if cbm - vbm > 0.05:
            return vbm - 2.0, cbm + 2.0, True
    return fermi - 2.0, fermi + 2.0, False


def evaluate(system: System, predicted: BlockSparse, kfrac: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Metrics of ``predicted`` and of H(0) against the system's converged H."""
    h = system.matrices["H"]
    h0 = system.matrices["H0"]
    s = system.matrices["S"]
    k = kfrac if kfrac is not None else system.kpoints.frac
    e_ref = band_energies(h, s, k)
    weights = system.kpoints.weights if kfrac is None else np.full(len(k), 1.0 / len(k))
    fermi = system.fermi_from_bands(e_ref, weights) if kfrac is None else system.fermi_ev.get("H", 0.0)
    lo, hi, insulator = band_window(e_ref, system.nelec, system.spin_degeneracy, fermi)
    sel = (e_ref >= lo) & (e_ref <= hi)
    a_ref, b_ref = spin_parts(h.aligned_to(h0))
    s_al = s.aligned_to(h0).data
    edge, _, _ = h0.entry_index()
    on = h0.onsite_blocks()[edge]
    length = block_lengths(system, h0)[edge]  # Å, per entry
    out = {}
    for name, m in (("predicted", predicted.aligned_to(h0)), ("h0", h0)):
        a, b = spin_parts(m)
        d = a - a_ref
        mu = float(np.dot(d, s_al) / np.dot(s_al, s_al))  # best rigid shift H -> H - μS
        e = band_energies(m, s, k)
        diff = e[sel] - e_ref[sel]
        shift = float(diff.mean()) if diff.size else 0.0
        lo_w, hi_w = lo - 1.0, hi + 1.0
        n_ref = ((e_ref >= lo_w) & (e_ref <= hi_w)).sum(axis=1)
        in_w = (e - shift >= lo_w) & (e - shift <= hi_w)
        n_pred = in_w.sum(axis=1)
        near = nearest_distance(e - shift, e_ref)  # eV, to the nearest DFT state
        res = {
            "h_mae_mev": 1e3 * float(np.abs(d).mean()),
            "h_mae_onsite_mev": 1e3 * float(np.abs(d[on]).mean()),
            "h_mae_offsite_mev": 1e3 * float(np.abs(d[~on]).mean()) if (~on).any() else 0.0,
            **{f"h_mae_{tag}_mev": 1e3 * float(np.abs(d[sel_r]).mean())
               for lo_r, hi_r, tag in LENGTH_BINS if (sel_r := ~on & (length >= lo_r) & (length < hi_r)).any()},
            "h_mae_shifted_mev": 1e3 * float(np.abs(d - mu * s_al).mean()),
            "rigid_shift_mev": 1e3 * mu,
            "band_mae_mev": 1e3 * float(np.abs(diff).mean()) if diff.size else 0.0,
            "band_mae_shifted_mev": 1e3 * float(np.abs(diff - shift).mean()) if diff.size else 0.0,
            "band_shift_mev": 1e3 * shift,
            "ghost_states": int(np.maximum(0, n_pred - n_ref).sum()),
            "far_states": int((near[in_w] > FAR_EV).sum()),
            "farthest_state_mev": 1e3 * float(near[in_w].max()) if in_w.any() else 0.0,
            "window_ev": [float(lo), float(hi)],
            "insulator": bool(insulator),
        }
        if b is not None and b_ref is not None:
            res["soc_mae_uev"] = 1e6 * float(np.abs(b - b_ref).mean())
        out[name] = res
    return out


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per source (predicted, h0): the mean of every numeric metric over structures (ghost and far
    states: the sum; the farthest state: the maximum), the medians of the H and shifted band MAE; for predicted also on how many structures its shifted
    band MAE beats H(0)'s."""
    out: dict[str, dict[str, float]] = {}
    for src in ("predicted", "h0"):
        keys = {k for r in rows for k, v in r[src].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out[src] = {}
        for key in sorted(keys):
            vals = [r[src][key] for r in rows if key in r[src]]
            if key in ("ghost_states", "far_states"):
                out[src][key] = float(np.sum(vals))
            elif key == "farthest_state_mev":
                out[src][key] = float(np.max(vals))
            else:
                out[src][key] = float(np.mean(vals))
        for key in ("band_mae_shifted_mev", "h_mae_mev"):  # one outlier crystal can carry the mean
            vals = [r[src][key] for r in rows if key in r[src]]
            if vals:
                out[src][key.replace("_mev", "_median_mev")] = float(np.median(vals))
        if src == "predicted":
            out[src]["structures_better_than_h0_bands"] = float(sum(
                r["predicted"].get("band_mae_shifted_mev", 0) < r["h0"].get("band_mae_shifted_mev", 0) for r in rows))
    return out
