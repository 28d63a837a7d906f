"""Losses: real-space ΔH blocks and reciprocal-space H(k) in the S(k)^-1/2 orthonormalised basis.

The k-space term compares S^-1/2 ΔH_pred(k) S^-1/2 with S^-1/2 ΔH_true(k) S^-1/2 at a few
k-points per structure: an error along S(k)'s small eigenvectors is amplified there, which
is exactly what creates ghost states in the bands, so the network is taught to avoid it.
By default the rigid shift μS is *predicted* (the loss is not made shift-invariant): the absolute
level of the converged H is well defined (ABACUS drops the G = 0 potential in both steps),
and metrics are reported with and without it. With ``TrainConfig.w_shift`` set, both terms compare
ΔH after removing each structure's least-squares μ (``rigid_shift``), and |μ| gets a weight of its
own, so that the shape of H is not traded against its absolute level.

The band-window term is first-order perturbation theory on the converged bands: with C_w the
generalised eigenvectors (C^† S C = 1) of the converged H(k) whose energies lie in the band window
of the metrics (2 eV below the VBM to 2 eV above the CBM; metals ±2 eV around E_F), the matrix
C_w^† (H_pred(k) − H(k)) C_w holds the first-order errors of those band energies on its diagonal and
their mixing off it. It is made invariant to a rigid shift (the mean of the diagonal is removed):
the real-space term carries the absolute level, this one the bands relative to each other. The
term is the norm of that matrix relative to H(0)'s (1 = no better than H(0)), with H(0)'s taken as at
least WINDOW_FLOOR_EV rms per state; or (``window_scale`` given) the absolute rms per window state in
units of that scale, which weighs structures by their band error in eV instead of by how much they
improve on H(0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..core.blocks import spinor_to_ab
from ..core.kspace import KAssembler, band_energies, solve_generalized
from ..core.system import System
from ..evaluation import band_window
from .graph import EdgeIndex
from .irreps import BasisLayout


@dataclass
class KData:
    """Per-structure k-space tensors (complex64): X = S(k)^-1/2 (nk, d, d), true ΔH(k) (nk, d, d),
    and the scatter map of padded edge entries (edge, padded row/col) → orbital (row, col)."""

    X: torch.Tensor
    dH: torch.Tensor
    phase: torch.Tensor  # (nk, E) e^{i2πk·R_e}
    edge: torch.Tensor
    pr: torch.Tensor
    pc: torch.Tensor
    flat: torch.Tensor  # row * d + col
    dim: int
    ref_norm: float  # |S^-1/2 ΔH_true S^-1/2|² summed over k (H(0)'s error)
    C: torch.Tensor | None = None  # (nk, d, nw) converged eigenvectors in the band window, zero-padded
    wmask: torch.Tensor | None = None  # (nk, nw) 1 for a real window state
    ref_window: float = 1.0  # the window loss of H(0) itself
    XSX: torch.Tensor | None = None  # (nk, d, d) S^-1/2 S S^-1/2 (1 but where S's eigenvalues are floored)

    def to(self, device) -> KData:
        """The same data on ``device`` (a no-op where it already is)."""
        kw = {f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
              for f in dataclasses.fields(self)}
        return KData(**kw)


def build_kdata(system: System, idx: EdgeIndex, layout: BasisLayout, kfrac: np.ndarray, s_floor: float = 1e-2,
                window_margin: float = 0.0, with_xsx: bool = False) -> KData:
    """k-space training data of the spin-free part (a) of ΔH; S(k)^-1/2 by eigendecomposition.

    Eigenvalues of S(k) below ``s_floor`` are raised to it: the amplification of errors along
    near-null directions is capped at 1/s_floor (a stiffer loss stalls training on CPU budgets).
    ``with_xsx``: also keep S^-1/2 S S^-1/2, which a loss with the rigid shift left out needs.
    """
    from .graph import _entry_index

    s = system.matrices["S"]
    h, h0 = system.matrices["H"], system.matrices["H0"]
    d = h.aligned_to(h0)
    dd = d.data - h0.data
    if h0.spin == "spinor":
        dd = spinor_to_ab(dd)[0]
    dm = h0.with_data(dd, "none")
    sk = KAssembler(s)(kfrac)
    w, v = np.linalg.eigh(sk)
    X = np.einsum("kij,kj,klj->kil", v, 1.0 / np.sqrt(np.clip(w, s_floor, None)), v.conj())
    dhk = KAssembler(dm)(kfrac)
    pos = [layout.positions(b) for b in system.bases]
    norb = system.norb
    sizes = norb[idx.ei] * norb[idx.ej]
    off = np.concatenate([[0], np.cumsum(sizes)])
    edge, lr, lc = _entry_index(off, norb[idx.ei], norb[idx.ej])
    pi = np.concatenate([pos[k] for k in system.kinds])
    aoff = np.concatenate([[0], np.cumsum(norb)])
    row, col = aoff[idx.ei[edge]] + lr, aoff[idx.ej[edge]] + lc
    dim = int(norb.sum())
    phase = np.exp(2j * np.pi * (kfrac @ idx.R.T))
    ref = float(np.sum(np.abs(X @ dhk @ X) ** 2))
    C, wmask, ref_w = _window_vectors(system, kfrac, sk, dhk, window_margin)
    return KData(
        X=torch.as_tensor(X, dtype=torch.complex64),
        dH=torch.as_tensor(dhk, dtype=torch.complex64),
        phase=torch.as_tensor(phase, dtype=torch.complex64),
        edge=torch.as_tensor(edge),
        pr=torch.as_tensor(pi[row]),
        pc=torch.as_tensor(pi[col]),
        flat=torch.as_tensor(row * dim + col),
        dim=dim,
        ref_norm=max(ref, 1e-12),
        C=None if C is None else torch.as_tensor(C, dtype=torch.complex64),
        wmask=None if wmask is None else torch.as_tensor(wmask, dtype=torch.float32),
        ref_window=ref_w,
        XSX=torch.as_tensor(X @ sk @ X, dtype=torch.complex64) if with_xsx else None,
    )


def _window_vectors(system: System, kfrac: np.ndarray, sk: np.ndarray, dhk: np.ndarray, margin: float = 0.0):
    """(C (nk, d, nw), mask (nk, nw), H(0)'s window loss) of the spin-free part of the converged H.

    ``margin`` (eV) widens the window on both sides (1 eV: the window in which ghost states are counted).

    The window is the metrics' (from the bands of the full converged H at these k-points); the
    vectors are those of its spin-free part (for SOC runs the two differ by the SOC splitting, well
    inside the 2 eV margins). None when no state lies in the window.
    """
    h, s = system.matrices["H"], system.matrices["S"]
    ha = h if h.spin == "none" else h.with_data(spinor_to_ab(h.data)[0], "none")
    e, c = solve_generalized(KAssembler(ha)(kfrac), sk, vectors=True)
    e_full = e if h.spin == "none" else band_energies(h, s, kfrac)  # spinors: the window from the full bands
    fermi = system.fermi_ev.get("H", float(np.median(e_full)))
    lo, hi, _ = band_window(e_full, system.nelec, system.spin_degeneracy, fermi)
    lo, hi = lo - margin, hi + margin
    inside = (e >= lo) & (e <= hi)
    nw = int(inside.sum(axis=1).max())
    if nw == 0:
        return None, None, 1.0
    C = np.zeros((len(kfrac), c.shape[1], nw), dtype=complex)
    mask = np.zeros((len(kfrac), nw))
    for k in range(len(kfrac)):
        cols = np.nonzero(inside[k])[0]
        C[k, :, : len(cols)] = c[k][:, cols]
        mask[k, : len(cols)] = 1.0
    ref = float(_window_error(torch.as_tensor(C), torch.as_tensor(mask), torch.as_tensor(-dhk)))
    # errors below WINDOW_FLOOR_EV (rms per state) are not amplified: where H(0)'s window is already
    # nearly right, the relative loss would otherwise make a few structures dominate training
    return C, mask, max(ref, float(mask.sum()) * WINDOW_FLOOR_EV**2)


#: eV, the rms band error per window state below which the band-window loss stops being relative
WINDOW_FLOOR_EV = 0.02


def _window_error(C: torch.Tensor, mask: torch.Tensor, err_k: torch.Tensor) -> torch.Tensor:
    """Σ |C^† E(k) C − μ 1|² over the window states, μ the mean first-order band shift (rigid shift removed)."""
    m = C.conj().transpose(1, 2) @ err_k.to(C.dtype) @ C  # (nk, nw, nw)
    pair = mask[:, :, None] * mask[:, None, :]
    diag = torch.diagonal(m, dim1=1, dim2=2).real * mask
    mu = diag.sum() / mask.sum().clamp_min(1)
    eye = torch.diag_embed(mask.to(m.real.dtype))
    return ((m - mu * eye).abs() ** 2 * pair).sum()


def _delta_k(delta: torch.Tensor, kd: KData) -> torch.Tensor:
    """ΔH_pred(k) (nk, d, d) at the structure's sampled k-points from its padded edge blocks."""
    vals = delta[kd.edge, kd.pr, kd.pc].to(torch.complex64)  # (nnz,)
    contrib = kd.phase[:, kd.edge] * vals[None, :]  # (nk, nnz)
    nk = contrib.shape[0]
    hk = torch.zeros(nk, kd.dim * kd.dim, dtype=torch.complex64, device=delta.device)
    return hk.index_add(1, kd.flat, contrib).reshape(nk, kd.dim, kd.dim)


def rigid_shift(diff: torch.Tensor, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """μ (eV, scalar) minimising Σ |diff − μ S|² over one structure's existing entries: the rigid shift
    of an error ``diff`` (E, n, n), with S (E, n, n) its overlap blocks."""
    sm = s * mask
    return (diff * sm).sum() / (sm * s).sum().clamp_min(1e-12)


def kspace_losses(delta: torch.Tensor, kd: KData, window: bool = True, mu: torch.Tensor | None = None,
                  window_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(orthonormalised-H(k) loss, band-window loss) of one structure, each relative to H(0)'s (1 = no
    better than H(0)), so that every structure weighs the same whatever its conditioning; the window
    loss in ``window_scale`` units instead where that is given.

    Orthonormalised: |S^-1/2 (ΔH_pred(k) − ΔH_true(k)) S^-1/2|². Band window: see the module
    docstring (None when the structure has no state in the window or ``window`` is False).
    delta: (E, n, n) predicted padded blocks of this structure's directed edges (eV). ``mu`` (eV): a
    rigid shift μS of the error to leave out (``kd`` built ``with_xsx``). ``window_scale`` (eV): the
    band-window loss as sqrt(Σ|C^† E C − μ1|² / n_states) / window_scale instead of relative to H(0).
    """
    diff = _delta_k(delta, kd) - kd.dH
    ortho = kd.X @ diff @ kd.X
    if mu is not None:
        ortho = ortho - mu * kd.XSX
    full = (ortho.abs() ** 2).sum() / kd.ref_norm
    win = None
    if window and kd.C is not None:  # a norm ratio, not its square: outliers weigh less
        ref = kd.ref_window if window_scale is None else kd.wmask.sum() * window_scale**2  # no host sync
        win = torch.sqrt(_window_error(kd.C, kd.wmask, diff) / ref + 1e-12)
    return full, win


def real_space_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scale: float,
                    beta: float = 0.02, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth-L1 ΔH error over existing orbital pairs, errors in units of ``scale``.

    Quadratic below ``beta`` (in scale units), linear above: close to the entry-wise MAE that
    the metrics report, so that the many small off-site entries count as much as the few large
    on-site ones. ``edge_weight`` (E,): each edge's entries weigh this much in the mean
    (Σ w·loss / Σ w·count); None: every entry alike.
    """
    m = mask if pred.dim() == mask.dim() else mask[..., None]
    per_entry = 1 if pred.dim() == mask.dim() else pred.shape[-1]  # components per orbital pair
    err = ((pred - target) * m).abs() / scale
    loss = torch.where(err < beta, 0.5 * err**2 / beta, err - 0.5 * beta)
    if edge_weight is None:
        return loss.sum() / (m.sum() * per_entry).clamp_min(1)
    count = m.flatten(1).sum(1) * per_entry
    return (edge_weight * loss.flatten(1).sum(1)).sum() / (edge_weight * count).sum().clamp_min(1e-12)


def stored_half_weight(onsite: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(E,) weight of each directed edge so that sums over the directed graph are sums over the stored
    entries that the H MAE metric averages: an off-site pair is stored once but has two directed edges
    (weight 1 each), an on-site block is its own mirror (weight 2)."""
    return 1.0 + onsite.to(dtype)


def metric_edge_weights(onsite: torch.Tensor, mask: torch.Tensor, spans: list[slice]) -> torch.Tensor:
    """(E,) edge weights that make the real-space loss weigh entries as the H MAE metric does: over the
    stored half (``stored_half_weight``) and every structure alike (the metric is a mean over
    structures of each structure's entry mean)."""
    w = stored_half_weight(onsite, mask.dtype)
    count = mask.flatten(1).sum(1)
    out = torch.empty_like(w)
    for sl in spans:
        out[sl] = w[sl] / (w[sl] * count[sl]).sum().clamp_min(1e-12)
    return out
