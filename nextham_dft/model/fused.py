"""A fused evaluation of e3nn's weighted ``uvw`` tensor products (what FullyConnectedTensorProduct builds).

e3nn evaluates a tensor product with one einsum per path (instruction). Our products have 68 to 166
paths on tensors of a few thousand edges, so the per-call overhead, not the arithmetic, sets their
cost. :class:`FusedTensorProduct` computes exactly the same bilinear map with the operations
grouped:

1. per pair of input degrees (l1, l2): the outer products of every x1 instance of degree l1 with
   every x2 instance of degree l2, contracted in one matrix product with the Wigner 3j symbols of
   all output degrees l3 stacked side by side (Q, the coupled features);
2. per output irrep: the coupled features of its paths gathered and contracted with their weights
   (times e3nn's path normalisation) in one (batched) matrix product.

It reads the instructions, weight layout and path weights of the e3nn module it is built from, so
a trained model's weights (the e3nn module's ``weight`` parameter, or the per-edge weights) are used
unchanged; tests compare both evaluations on random inputs and weights.

It wins where calls are many and tensors small (small cells, training batches: 1.5–2.5× on 256 to
1,024 rows); on thousands of rows both are bound by memory traffic and e3nn's per-path loop, which
never holds all coupled features at once, is as fast or faster (see ``HamiltonianCorrection``).

:class:`BilinearTable` is the third evaluation, for a shared-weight product of node features over
the atom pairs of a big cell: the product's dense bilinear form (``bilinear_tensor``), contracted
with each atom's features once, then one matrix product per atom for all of its pairs.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn


def _instances_by_l(irreps: o3.Irreps) -> dict[int, list[tuple[int, int, int]]]:
    """For each degree l: the instances (block index, u within the block, first component) of ``irreps``."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    for b, (sl, (mul, ir)) in enumerate(zip(irreps.slices(), irreps)):
        for u in range(mul):
            out.setdefault(ir.l, []).append((b, u, sl.start + u * ir.dim))
    return out


class FusedTensorProduct(nn.Module):
    """``tp(x1, x2, weight)`` of an e3nn ``uvw`` TensorProduct, in a handful of grouped operations.

    x1: (E, irreps_in1.dim), x2: (E, irreps_in2.dim); weight: (E, weight_numel) per-edge weights, or
    (weight_numel,) shared ones (the e3nn module's own ``weight`` parameter: the fused module holds
    index tables only, so the model's parameters and saved files are unchanged).
    Returns (E, irreps_out.dim), the e3nn layout.
    """

    def __init__(self, tp: o3.TensorProduct) -> None:
        super().__init__()
        ins = [i for i in tp.instructions if 0 not in i.path_shape]
        for i in ins:
            if i.connection_mode != "uvw" or not i.has_weight:
                raise ValueError(f"FusedTensorProduct handles weighted 'uvw' paths only, not {i.connection_mode!r}")
        self.shared = bool(tp.shared_weights)
        #: float64 constants (3j symbols, path weights), cast on use (see :meth:`_const`): as buffers, a
        #: float32 model's .to(float64) would keep their float32 rounding
        self._exact: dict[str, torch.Tensor] = {}
        self._cast: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        ir1, ir2, iro = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        self.out_dim = iro.dim
        by_l1, by_l2 = _instances_by_l(ir1), _instances_by_l(ir2)
        # which output degrees each (l1, l2) pair feeds
        l3s: dict[tuple[int, int], list[int]] = {}
        for i in ins:
            key = (ir1[i.i_in1].ir.l, ir2[i.i_in2].ir.l)
            l3 = iro[i.i_out].ir.l
            if l3 not in l3s.setdefault(key, []):
                l3s[key].append(l3)
        self.pairs = sorted(l3s)
        # stage 1 tables: per pair, component indices of the x1 / x2 instances and the stacked 3j
        self._pair_shapes: list[tuple[int, int, int, int, int]] = []  # (U1, U2, d1, d2, columns)
        pair_base, col_of = {}, {}
        base = 0
        for k, (l1, l2) in enumerate(self.pairs):
            d1, d2 = 2 * l1 + 1, 2 * l2 + 1
            U1, U2 = len(by_l1[l1]), len(by_l2[l2])
            self.register_buffer(f"idx1_{k}", torch.tensor([s + m for _b, _u, s in by_l1[l1] for m in range(d1)]),
                                 persistent=False)
            self.register_buffer(f"idx2_{k}", torch.tensor([s + m for _b, _u, s in by_l2[l2] for m in range(d2)]),
                                 persistent=False)
            cols, c0 = [], 0
            for l3 in sorted(l3s[(l1, l2)]):
                cols.append(o3.wigner_3j(l1, l2, l3, dtype=torch.float64).reshape(d1 * d2, 2 * l3 + 1))
                col_of[(l1, l2, l3)] = c0
                c0 += 2 * l3 + 1
            self._exact[f"w3j_{k}"] = torch.cat(cols, dim=1)
            self._pair_shapes.append((U1, U2, d1, d2, c0))
            pair_base[(l1, l2)] = base
            base += U1 * U2 * c0
        # stage 2 tables: per output block, the coupled-feature rows of its paths and their weights
        pos1 = {(b, u): n for l, lst in by_l1.items() for n, (b, u, _s) in enumerate(lst)}
        pos2 = {(b, u): n for l, lst in by_l2.items() for n, (b, u, _s) in enumerate(lst)}
        w_off, off = [], 0
        for i in ins:
            w_off.append(off)
            off += math.prod(i.path_shape)
        self.weight_numel = off
        self.outputs: list[tuple[int, int, int]] = []  # (output block, mul, dim) with at least one path
        for o, (mul_o, ir_o) in enumerate(iro):
            q_rows, w_rows, scale = [], [], []
            for i, wo in zip(ins, w_off):
                if i.i_out != o:
                    continue
                (m1, r1), (m2, r2) = ir1[i.i_in1], ir2[i.i_in2]
                l1, l2, l3 = r1.l, r2.l, ir_o.l
                U2, c_tot = len(by_l2[l2]), self._pair_shapes[self.pairs.index((l1, l2))][4]
                c = col_of[(l1, l2, l3)]
                for u in range(m1):
                    for v in range(m2):
                        q0 = pair_base[(l1, l2)] + (pos1[(i.i_in1, u)] * U2 + pos2[(i.i_in2, v)]) * c_tot + c
                        q_rows.append([q0 + k for k in range(ir_o.dim)])
                        w_rows.append([wo + (u * m2 + v) * mul_o + w for w in range(mul_o)])
                        scale.append(i.path_weight)
            if not q_rows:
                continue
            n = len(self.outputs)
            self.outputs.append((o, mul_o, ir_o.dim))
            self.register_buffer(f"q_{n}", torch.tensor(q_rows).reshape(-1), persistent=False)
            self.register_buffer(f"w_{n}", torch.tensor(w_rows).reshape(-1), persistent=False)
            self._exact[f"s_{n}"] = torch.tensor(scale, dtype=torch.float64)[:, None]
        self._out_slices = [iro.slices()[o] for o, _m, _d in self.outputs]
        self._complete = [o for o, _m, _d in self.outputs] == list(range(len(iro))) and all(m > 0 for m, _ in iro)

    def _const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The float64 constant ``name`` on ``like``'s device and in its dtype (cached)."""
        key = (name, like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = self._exact[name].to(device=like.device, dtype=like.dtype)
        return self._cast[key]

    def coupled(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """(E, ΣU1·U2·columns) coupled features: every x1 ⊗ x2 instance pair projected on each l3."""
        E = x1.shape[0]
        parts = []
        for k, (U1, U2, d1, d2, c) in enumerate(self._pair_shapes):
            a = x1.index_select(1, getattr(self, f"idx1_{k}")).reshape(E, U1, d1)
            b = x2.index_select(1, getattr(self, f"idx2_{k}")).reshape(E, U2, d2)
            xx = (a[:, :, None, :, None] * b[:, None, :, None, :]).reshape(E * U1 * U2, d1 * d2)
            parts.append((xx @ self._const(f"w3j_{k}", xx)).reshape(E, U1 * U2 * c))
        return torch.cat(parts, dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        E = x1.shape[0]
        q = self.coupled(x1, x2)
        outs = []
        for n, (_o, mul, dim) in enumerate(self.outputs):
            qn = q.index_select(1, getattr(self, f"q_{n}")).reshape(E, -1, dim)  # (E, P, dim)
            s = self._const(f"s_{n}", q)
            if self.shared:
                wn = weight.index_select(0, getattr(self, f"w_{n}")).reshape(-1, mul) * s  # (P, mul)
                outs.append(torch.matmul(qn.transpose(1, 2), wn).transpose(1, 2).reshape(E, mul * dim))
            else:
                wn = weight.index_select(1, getattr(self, f"w_{n}")).reshape(E, -1, mul) * s  # (E, P, mul)
                outs.append(torch.bmm(wn.transpose(1, 2), qn).reshape(E, mul * dim))
        if self._complete:
            return torch.cat(outs, dim=1)
        out = x1.new_zeros(E, self.out_dim)
        for sl, y in zip(self._out_slices, outs):
            out[:, sl] = y
        return out


def bilinear_tensor(tp: o3.TensorProduct, weight: torch.Tensor) -> torch.Tensor:
    """(d1, d2, d_out): the bilinear form M of a weighted ``uvw`` tensor product with the weights
    ``weight`` (weight_numel,), tp(x1, x2)[k] = Σ_ab M[a, b, k] x1[a] x2[b], summed path by path
    from e3nn's instructions (weights, path weights, Wigner 3j symbols in float64) in weight's dtype."""
    ir1, ir2, iro = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
    s1, s2, so = ir1.slices(), ir2.slices(), iro.slices()
    m = torch.zeros(ir1.dim, ir2.dim, iro.dim, dtype=torch.float64, device=weight.device)
    w64 = weight.detach().to(torch.float64)
    off = 0
    for i in tp.instructions:
        if 0 in i.path_shape:
            continue
        if i.connection_mode != "uvw" or not i.has_weight:
            raise ValueError(f"bilinear_tensor handles weighted 'uvw' paths only, not {i.connection_mode!r}")
        (m1, r1), (m2, r2), (mo, ro) = ir1[i.i_in1], ir2[i.i_in2], iro[i.i_out]
        n = m1 * m2 * mo
        w = w64[off: off + n].reshape(m1, m2, mo)
        off += n
        c = o3.wigner_3j(r1.l, r2.l, ro.l, dtype=torch.float64, device=weight.device)
        blk = i.path_weight * torch.einsum("uvw,ijk->uivjwk", w, c).reshape(m1 * r1.dim, m2 * r2.dim, mo * ro.dim)
        m[s1[i.i_in1], s2[i.i_in2], so[i.i_out]] += blk
    return m.to(weight.dtype)


class BilinearTable:
    """A shared-weight tensor product evaluated as the dense bilinear form it is, for many pairs of
    few distinct inputs: tp(x1, x2)[k] = Σ_ab M[a, b, k] x1[a] x2[b].

    The pair term of ``HamiltonianCorrection`` takes the product of two *node* features for every
    atom pair of a big cell (tens of thousands of pairs, hundreds of distinct atoms). With
    A_i = Σ_a M[a] x1_i[a] (one (d2, d_out) matrix per atom i, computed once), each pair (i, j)
    costs one matrix-vector product x2_jᵀ A_i, and the pairs of one atom i are one matrix product.

    M is summed from the module's own paths (``bilinear_tensor``): the same bilinear map, to float
    rounding, and equivariant as the module is. It depends on the weights: ``stale`` says when they
    have changed since. Inference only: it does not differentiate through the weights.
    """

    def __init__(self, tp: o3.TensorProduct, weight: torch.Tensor) -> None:
        #: the weights M was made from (a copy: writes through ``.data`` leave no version trace)
        self.weight = weight.detach().clone()
        with torch.no_grad():
            m = bilinear_tensor(tp, weight)
        self.d1, self.d2, self.d_out = m.shape
        #: (d1, d2 · d_out): row a holds the (d2, d_out) matrix of the unit vector e_a
        self.m = m.reshape(self.d1, -1)

    def stale(self, weight: torch.Tensor) -> bool:
        """True when ``weight`` differs (values, dtype or device) from the weights M was made from."""
        w = self.weight
        return w.dtype != weight.dtype or w.device != weight.device or not torch.equal(w, weight.detach())

    def left(self, x1: torch.Tensor) -> torch.Tensor:
        """(N, d2, d_out): A_i = Σ_a M[a] x1_i[a] for each row of x1 (N, d1)."""
        return (x1 @ self.m).reshape(len(x1), self.d2, self.d_out)

    def pairs(self, a: torch.Tensor, x2: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
              group: int = 64) -> torch.Tensor:
        """(P, d_out): tp(x1_i, x2_j) for the pairs (i[p], j[p]), with a = ``left(x1)``.

        Each run of consecutive pairs of one atom i (all of them when i is sorted) is one matrix
        product x2[j] @ A_i; runs are taken ``group`` at a time, padded to the longest.
        """
        out = x2.new_empty(len(i), self.d_out)
        if len(i) == 0:
            return out
        atoms, counts = torch.unique_consecutive(i, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        for g0 in range(0, len(atoms), group):
            at, cn, st = atoms[g0: g0 + group], counts[g0: g0 + group], starts[g0: g0 + group]
            width = int(cn.max())
            slot = torch.arange(width, device=i.device)
            valid = slot[None, :] < cn[:, None]  # (g, width)
            rows = (st[:, None] + slot[None, :]).clamp_max(len(i) - 1)  # pair index of each slot
            xj = x2[j[rows]] * valid[..., None].to(x2.dtype)  # (g, width, d2)
            y = torch.bmm(xj, a[at])  # (g, width, d_out)
            out[rows[valid]] = y[valid]
        return out
