"""Atom-pair blocks ⇄ irreps, with Clebsch–Gordan coefficients (e3nn's Wigner 3j).

A *layout* fixes the shell slots every species is padded into (the DZP family:
up to 4 s, 2 p, 2 d, 1 f zetas), so that any basis of the family is handled
without code changes: zeta multiplicity becomes channel multiplicity.

For two shells (l1, l2) a block B (2l1+1, 2l2+1) decomposes as l1 ⊗ l2 = ⊕ L with
parity (-1)^(l1+l2): c_LM = sqrt(2L+1) Σ_ij W^{l1 l2 L}_{ijM} B_ij. The SOC spin
part b (three Cartesian components, a pseudo-vector) decomposes as
(l1 ⊗ l2) ⊗ 1e = ⊕ L'. Both maps are orthogonal matrices, so reconstruction is the
transpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from e3nn import o3

from ..core.basis import SpeciesBasis
from ..errors import BasisMismatchError


def _w3j(l1: int, l2: int, l3: int) -> np.ndarray:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return o3.wigner_3j(l1, l2, l3).numpy()
    finally:
        torch.set_default_dtype(old)


@dataclass(frozen=True)
class BasisLayout:
    """Shell slots ((l, number of zetas), ...) into which every species is padded."""

    slots: tuple[tuple[int, int], ...] = ((0, 4), (1, 2), (2, 2), (3, 1))

    @cached_property
    def shells(self) -> list[tuple[int, int, int]]:
        """(l, zeta, offset) of every slot shell, in canonical order."""
        out, off = [], 0
        for l, n in self.slots:
            for z in range(n):
                out.append((l, z, off))
                off += 2 * l + 1
        return out

    @property
    def size(self) -> int:
        """Orbitals of the padded basis."""
        return sum(n * (2 * l + 1) for l, n in self.slots)

    def positions(self, basis: SpeciesBasis) -> np.ndarray:
        """(norb,) padded position of each orbital of ``basis``; BasisMismatchError when it does not fit."""
        cap = dict(self.slots)
        off = {(l, z): o for l, z, o in self.shells}
        pos = []
        for s in basis.shells:
            if s.l not in cap or s.zeta >= cap[s.l]:
                raise BasisMismatchError(
                    f"{basis.source or basis.element}: shell l={s.l} zeta={s.zeta} does not fit the model's basis layout "
                    f"{self.label()}"
                )
            pos.extend(range(off[(s.l, s.zeta)], off[(s.l, s.zeta)] + 2 * s.l + 1))
        return np.array(pos, dtype=np.int64)

    def label(self) -> str:
        return "".join(f"{n}{'spdfgh'[l]}" for l, n in self.slots)


class BlockIrreps:
    """Orthogonal maps padded block (n×n) → irreps (spin-free part) and (n×n×3) → irreps (spin part)."""

    def __init__(self, layout: BasisLayout) -> None:
        self.layout = layout
        n = layout.size
        cols: dict[tuple[int, int], list[np.ndarray]] = {}
        cols_b: dict[tuple[int, int], list[np.ndarray]] = {}
        pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for a, (l1, _z1, o1) in enumerate(layout.shells):
            for b, (l2, _z2, o2) in enumerate(layout.shells):
                p = (-1) ** (l1 + l2)
                rows = ((o1 + np.arange(2 * l1 + 1))[:, None] * n + (o2 + np.arange(2 * l2 + 1))[None, :])
                for L in range(abs(l1 - l2), l1 + l2 + 1):
                    w = _w3j(l1, l2, L) * np.sqrt(2 * L + 1)  # (2l1+1, 2l2+1, 2L+1)
                    m = np.zeros((n * n, 2 * L + 1))
                    m[rows.reshape(-1)] = w.reshape(-1, 2 * L + 1)
                    cols.setdefault((L, p), []).append(m)
                    pairs.setdefault((L, p), []).append((a, b))
                    # spin part: (L ⊗ 1e) → L'
                    for Lp in range(abs(L - 1), L + 2):
                        v = _w3j(L, 1, Lp) * np.sqrt(2 * Lp + 1)  # (2L+1, 3, 2L'+1)
                        mb = np.einsum("rM,Mcq->rcq", m, v).reshape(n * n * 3, 2 * Lp + 1)
                        cols_b.setdefault((Lp, p), []).append(mb)
        self.irreps, self.matrix = self._assemble(cols)
        #: (num_irreps, 2) the shell slots (row, column) each irrep instance of ``irreps`` comes from
        self.instance_shells = np.array([ab for k in sorted(pairs, key=lambda k: (k[0], -k[1])) for ab in pairs[k]])
        self.irreps_spin, self.matrix_spin = self._assemble(cols_b)

    @staticmethod
    def _assemble(cols: dict[tuple[int, int], list[np.ndarray]]) -> tuple[o3.Irreps, np.ndarray]:
        keys = sorted(cols, key=lambda k: (k[0], -k[1]))
        irreps = o3.Irreps([(len(cols[k]), (k[0], k[1])) for k in keys])
        mat = np.concatenate([np.concatenate(cols[k], axis=1) for k in keys], axis=1)
        return irreps, mat

    @cached_property
    def torch_matrix(self) -> torch.Tensor:
        return torch.as_tensor(self.matrix, dtype=torch.float64)

    @cached_property
    def torch_matrix_spin(self) -> torch.Tensor:
        return torch.as_tensor(self.matrix_spin, dtype=torch.float64)

    def to_irreps(self, blocks: torch.Tensor) -> torch.Tensor:
        """(E, n, n) padded blocks → (E, irreps.dim)."""
        m = self.torch_matrix.to(blocks.dtype)
        return blocks.reshape(blocks.shape[0], -1) @ m

    def from_irreps(self, x: torch.Tensor) -> torch.Tensor:
        """(E, irreps.dim) → (E, n, n) padded blocks."""
        n = self.layout.size
        return (x @ self.torch_matrix.to(x.dtype).T).reshape(-1, n, n)

    def spin_to_irreps(self, b: torch.Tensor) -> torch.Tensor:
        """(E, n, n, 3) Cartesian spin blocks → (E, irreps_spin.dim)."""
        return b.reshape(b.shape[0], -1) @ self.torch_matrix_spin.to(b.dtype)

    def spin_from_irreps(self, x: torch.Tensor) -> torch.Tensor:
        n = self.layout.size
        return (x @ self.torch_matrix_spin.to(x.dtype).T).reshape(-1, n, n, 3)


class BlockSparseMap(torch.nn.Module):
    """x @ M and y @ Mᵀ for a block–Clebsch–Gordan matrix M without the dense product.

    M (the maps of :class:`BlockIrreps`) sends the entries of each shell pair to its own
    irreps: per shell pair a small orthogonal block, identical for all pairs of the same
    (l1, l2). Grouping the pairs by type turns the dense (E, N) @ (N, N) product (≈ 3 % of
    it non-zero for the DZP layout) into one batched small product per type; results are
    the same to round-off. ``groups`` lists the flat input indices of each shell pair.
    """

    def __init__(self, matrix: np.ndarray, groups: list[np.ndarray]) -> None:
        super().__init__()
        self.n_in, self.n_out = matrix.shape
        by_type: dict[tuple[int, bytes], list[tuple[np.ndarray, np.ndarray]]] = {}
        blocks: dict[tuple[int, bytes], np.ndarray] = {}
        for rows in groups:
            sub = matrix[rows]
            cols = np.nonzero(np.any(np.abs(sub) > 1e-14, axis=0))[0]
            c = sub[:, cols]
            key = (len(rows), np.round(c, 12).tobytes())
            blocks.setdefault(key, c)
            by_type.setdefault(key, []).append((rows, cols))
        # one gather puts the inputs of each type side by side, one gather restores the output order
        in_perm = np.concatenate([r for members in by_type.values() for r, _ in members])
        out_perm = np.concatenate([c for members in by_type.values() for _, c in members])
        if not (np.array_equal(np.sort(in_perm), np.arange(self.n_in))
                and np.array_equal(np.sort(out_perm), np.arange(self.n_out))):
            raise ValueError("the shell-pair groups must partition the rows and columns of the map")
        self.register_buffer("in_perm", torch.as_tensor(in_perm), persistent=False)
        self.register_buffer("in_unperm", torch.as_tensor(np.argsort(in_perm)), persistent=False)
        self.register_buffer("out_perm", torch.as_tensor(out_perm), persistent=False)
        self.register_buffer("out_unperm", torch.as_tensor(np.argsort(out_perm)), persistent=False)
        self.types: list[tuple[int, int, int]] = []  # (pairs, rows per pair, columns per pair)
        for t, (key, members) in enumerate(by_type.items()):
            c = blocks[key]
            self.types.append((len(members), c.shape[0], c.shape[1]))
            self.register_buffer(f"c{t}", torch.as_tensor(c, dtype=torch.float32), persistent=False)
        self.n_types = len(self.types)

    def _map(self, x: torch.Tensor, perm: torch.Tensor, unperm: torch.Tensor, transpose: bool) -> torch.Tensor:
        xp = x.index_select(1, perm)
        parts, a = [], 0
        for t, (p, k_in, k_out) in enumerate(self.types):
            c = getattr(self, f"c{t}").to(x.dtype)
            k, kk = (k_out, k_in) if transpose else (k_in, k_out)
            seg = xp[:, a: a + p * k].reshape(-1, p, k)
            parts.append((seg @ (c.T if transpose else c)).reshape(-1, p * kk))
            a += p * k
        return torch.cat(parts, dim=1).index_select(1, unperm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, n_in) → x @ M (E, n_out)."""
        return self._map(x, self.in_perm, self.out_unperm, transpose=False)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """y (E, n_out) → y @ Mᵀ (E, n_in)."""
        return self._map(y, self.out_perm, self.in_unperm, transpose=True)


def shell_pair_groups(layout: BasisLayout, spin: bool = False) -> list[np.ndarray]:
    """Flat input indices of every shell pair of a padded block (n·n, or n·n·3 for the spin part)."""
    n = layout.size
    out = []
    for l1, _z1, o1 in layout.shells:
        for l2, _z2, o2 in layout.shells:
            rows = (o1 + np.arange(2 * l1 + 1))[:, None] * n + (o2 + np.arange(2 * l2 + 1))[None, :]
            if spin:
                rows = (rows[..., None] * 3 + np.arange(3)).reshape(-1)
            out.append(rows.reshape(-1))
    return out
