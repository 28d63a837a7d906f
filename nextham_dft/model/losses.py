"""Losses: real-space ΔH blocks and reciprocal-space H(k) in the S(k)^-1/2 orthonormalised basis.

The k-space term compares S^-1/2 ΔH_pred(k) S^-1/2 with S^-1/2 ΔH_true(k) S^-1/2 at a few
k-points per structure: an error along S(k)'s small eigenvectors is amplified there, which
is exactly what creates ghost states in the bands, so the network is taught to avoid it.
The rigid shift μS is *predicted* (the loss is not made shift-invariant): the absolute
level of the converged H is well defined (ABACUS drops the G = 0 potential in both steps),
and metrics are reported with and without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.blocks import spinor_to_ab
from ..core.kspace import KAssembler
from ..core.system import System
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


def build_kdata(system: System, idx: EdgeIndex, layout: BasisLayout, kfrac: np.ndarray, s_floor: float = 1e-2) -> KData:
    """k-space training data of the spin-free part (a) of ΔH; S(k)^-1/2 by eigendecomposition.

    Eigenvalues of S(k) below ``s_floor`` are raised to it: the amplification of errors along
    near-null directions is capped at 1/s_floor (a stiffer loss stalls training on CPU budgets).
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
    )


def kspace_loss(delta: torch.Tensor, kd: KData) -> torch.Tensor:
    """|S^-1/2 (ΔH_pred(k) − ΔH_true(k)) S^-1/2|² relative to |S^-1/2 ΔH_true(k) S^-1/2|² (H(0)'s error).

    Relative, so that every structure weighs the same whatever its conditioning: 1 means
    "no better than H(0)". delta: (E, n, n) predicted padded blocks of this structure's
    directed edges (eV).
    """
    vals = delta[kd.edge, kd.pr, kd.pc].to(torch.complex64)  # (nnz,)
    contrib = kd.phase[:, kd.edge] * vals[None, :]  # (nk, nnz)
    nk = contrib.shape[0]
    hk = torch.zeros(nk, kd.dim * kd.dim, dtype=torch.complex64, device=delta.device)
    hk = hk.index_add(1, kd.flat, contrib).reshape(nk, kd.dim, kd.dim)
    err = kd.X @ (hk - kd.dH) @ kd.X
    return (err.abs() ** 2).sum() / kd.ref_norm


def real_space_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scale: float,
                    beta: float = 0.02) -> torch.Tensor:
    """Smooth-L1 ΔH error over existing orbital pairs, errors in units of ``scale``.

    Quadratic below ``beta`` (in scale units), linear above: close to the entry-wise MAE that
    the metrics report, so that the many small off-site entries count as much as the few large
    on-site ones.
    """
    m = mask if pred.dim() == mask.dim() else mask[..., None]
    n = m.sum() * (1 if pred.dim() == mask.dim() else pred.shape[-1])
    err = ((pred - target) * m).abs() / scale
    loss = torch.where(err < beta, 0.5 * err**2 / beta, err - 0.5 * beta)
    return loss.sum() / n.clamp_min(1)
