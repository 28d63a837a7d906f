"""Block-sparse real-space matrices M(R) over atom pairs (H(R), S(R), density matrices).

Only half of the atom-pair blocks is stored: the block (i, j, R) is kept when R is
positive (its first non-zero component is > 0), or R = 0 and i <= j. The other
half follows from hermiticity, M(-R)_ji = M(R)_ij^†, which therefore holds exactly
by construction; :meth:`BlockSparse.to_coo` expands it. Diagonal blocks
(i = i, R = 0) are made hermitian on construction.

Spin layouts (``spin``):

* ``"none"``: data (nnz,) real — nspin 1 H, or any S;
* ``"collinear"``: data (nnz, 2) real — spin up, spin down (nspin 2);
* ``"spinor"``: data (nnz, 2, 2) complex — value[s, s'] = <φ_μ s| M |φ_ν s'>
  (spin basis up/down along z), nspin 4 with or without SOC.

Blocks are flattened row-major (n_i × n_j) one after the other in ``data``,
block e starting at ``offsets[e]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPIN_LAYOUTS = ("none", "collinear", "spinor")


def spin_shape(spin: str) -> tuple[int, ...]:
    """Trailing shape of one matrix entry for a spin layout."""
    return {"none": (), "collinear": (2,), "spinor": (2, 2)}[spin]


def unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(a, axis=0, return_inverse=True) for integer rows (see :func:`unique_columns`)."""
    a = np.asarray(a, dtype=np.int64)
    if a.ndim != 2 or len(a) == 0:
        u, inv = np.unique(a.reshape(len(a), -1), axis=0, return_inverse=True)
        return u, inv.reshape(-1)
    return unique_columns([a[:, c] for c in range(a.shape[1])])


def unique_columns(cols: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of the integer table whose columns are ``cols``, sorted lexicographically,
    and each row's index among them: np.unique(stack(cols, 1), axis=0, return_inverse=True).

    Each row becomes one int64 key (mixed radix over the columns' ranges), so no (n, k) table is
    built. When the keys span a range comparable to their number, a lookup table over that range
    replaces the sort (linear time); otherwise the 1-D keys are sorted, an order of magnitude faster
    than numpy's row-wise unique, which dominated reading large matrices.
    """
    cols = [np.asarray(c, dtype=np.int64) for c in cols]
    n = len(cols[0])
    if n == 0:
        return np.zeros((0, len(cols)), dtype=np.int64), np.zeros(0, dtype=np.int64)
    lo = np.array([c.min() for c in cols])
    span = np.array([c.max() for c in cols]) - lo + 1
    total = float(np.prod(span.astype(float)))
    if total >= 2.0**62:
        u, inv = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
        return u, inv.reshape(-1)
    key = cols[0] - lo[0]
    for c in range(1, len(cols)):
        key = key * span[c] + (cols[c] - lo[c])
    if total <= 4 * n + (1 << 20):
        present = np.zeros(int(total), dtype=bool)
        present[key] = True
        uk = np.flatnonzero(present)
        rank = np.empty(int(total), dtype=np.int64)
        rank[uk] = np.arange(len(uk))
        inv = rank[key]
    else:
        uk, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1)
    out = np.empty((len(uk), len(cols)), dtype=np.int64)
    rest = uk
    for c in range(len(cols) - 1, -1, -1):
        out[:, c] = rest % span[c] + lo[c]
        rest = rest // span[c]
    return out, inv


def is_onsite(i: np.ndarray, j: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Boolean mask of the on-site keys (i, i, R = 0): the blocks that are their own mirror."""
    return (np.asarray(i) == np.asarray(j)) & np.all(np.asarray(R) == 0, axis=1)


def is_canonical_half(i: np.ndarray, j: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Boolean mask of the (i, j, R) keys that belong to the stored half."""
    R = np.asarray(R)
    first = np.where(R[:, 0] != 0, R[:, 0], np.where(R[:, 1] != 0, R[:, 1], R[:, 2]))
    return (first > 0) | ((first == 0) & (np.asarray(i) <= np.asarray(j)))


def _adjoint_entries(values: np.ndarray, spin: str) -> np.ndarray:
    """Entry-wise part of the adjoint: conj, and swapped spin indices for spinors."""
    if spin == "spinor":
        return np.conj(np.swapaxes(values, -1, -2))
    return np.conj(values) if np.iscomplexobj(values) else values


@dataclass
class BlockSparse:
    """Hermitian block-sparse M(R). Units are the caller's (eV for H, 1 for S).

    norb: (n_atoms,) orbitals per atom (without spin);
    edge_i, edge_j: (E,) atom indices; R: (E, 3) int lattice vector, so that the
    block is <φ_i(r - τ_i)| M |φ_j(r - τ_j - R)>;
    offsets: (E + 1,) int; data: (nnz, *spin_shape).
    """

    norb: np.ndarray
    edge_i: np.ndarray
    edge_j: np.ndarray
    R: np.ndarray
    offsets: np.ndarray
    data: np.ndarray
    spin: str = "none"
    #: largest |M(R)_ij - M(-R)_ji^†| found when the matrix was built from both halves.
    hermiticity_error: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        if self.spin not in SPIN_LAYOUTS:
            raise ValueError(f"unknown spin layout {self.spin!r}")
        self.norb = np.asarray(self.norb, dtype=np.int64)
        self.edge_i = np.asarray(self.edge_i, dtype=np.int64)
        self.edge_j = np.asarray(self.edge_j, dtype=np.int64)
        self.R = np.asarray(self.R, dtype=np.int64).reshape(-1, 3)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        sizes = self.norb[self.edge_i] * self.norb[self.edge_j]
        if self.offsets.shape != (len(self.edge_i) + 1,) or np.any(np.diff(self.offsets) != sizes):
            raise ValueError("offsets do not match the block sizes")
        if self.data.shape != (int(self.offsets[-1]),) + spin_shape(self.spin):
            raise ValueError(f"data shape {self.data.shape} does not match layout {self.spin}")

    # ------------------------------------------------------------------ basic facts
    @property
    def n_atoms(self) -> int:
        return len(self.norb)

    @property
    def n_edges(self) -> int:
        return len(self.edge_i)

    @property
    def dim(self) -> int:
        """Matrix dimension without spin."""
        return int(self.norb.sum())

    @property
    def atom_offsets(self) -> np.ndarray:
        """(n_atoms + 1,) first orbital of each atom."""
        return np.concatenate([[0], np.cumsum(self.norb)])

    def onsite_blocks(self) -> np.ndarray:
        """(n_edges,) bool: the stored blocks that are on-site, (i, i, R = 0)."""
        return is_onsite(self.edge_i, self.edge_j, self.R)

    def unique_R(self, full: bool = True) -> np.ndarray:
        """Distinct lattice vectors (with their negatives when full)."""
        R = self.R if not full else np.concatenate([self.R, -self.R])
        return np.unique(R, axis=0)

    def block(self, i: int, j: int, R: tuple[int, int, int] | np.ndarray) -> np.ndarray | None:
        """The (n_i, n_j, *spin) block <i| M |j, R>, or None when absent (zero)."""
        R = np.asarray(R, dtype=np.int64)
        mirror = not is_canonical_half(np.array([i]), np.array([j]), R[None])[0]
        a, b, RR = (j, i, -R) if mirror else (i, j, R)
        hit = np.nonzero((self.edge_i == a) & (self.edge_j == b) & np.all(self.R == RR, axis=1))[0]
        if len(hit) == 0:
            return None
        e = hit[0]
        blk = self.data[self.offsets[e] : self.offsets[e + 1]].reshape(
            (self.norb[a], self.norb[b]) + spin_shape(self.spin)
        )
        if mirror:
            blk = _adjoint_entries(np.swapaxes(blk, 0, 1), self.spin)
        return blk.copy()

    def entry_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every stored entry: (edge, local row, local column), each (nnz,)."""
        sizes = np.diff(self.offsets)
        edge = np.repeat(np.arange(self.n_edges), sizes)
        local = np.arange(len(edge)) - self.offsets[edge]
        ncol = self.norb[self.edge_j][edge]
        return edge, local // ncol, local % ncol

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_coo(
        cls,
        norb: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        R: np.ndarray,
        values: np.ndarray,
        spin: str = "none",
    ) -> BlockSparse:
        """Build from orbital-level entries of M(R) (global orbital indices, either half or both).

        Entries given on both sides of a mirror pair are averaged (their largest
        difference is kept in ``hermiticity_error``); an entry given on one side only
        is taken as is. Missing entries inside a present block are zero.
        """
        norb = np.asarray(norb, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        R = np.asarray(R, dtype=np.int64).reshape(-1, 3)
        values = np.asarray(values)
        aoff = np.concatenate([[0], np.cumsum(norb)])
        atom_of = np.repeat(np.arange(len(norb)), norb)
        ai, aj = atom_of[rows], atom_of[cols]
        li, lj = rows - aoff[ai], cols - aoff[aj]
        keep = is_canonical_half(ai, aj, R)
        # map the other half onto its mirror: (j, i, -R), transposed, adjoint entry
        ai2 = np.where(keep, ai, aj)
        aj2 = np.where(keep, aj, ai)
        li2 = np.where(keep, li, lj)
        lj2 = np.where(keep, lj, li)
        R2 = np.where(keep[:, None], R, -R)
        vals = values.copy()
        if (~keep).any():
            vals[~keep] = _adjoint_entries(values[~keep], spin)
        # diagonal blocks: entry (a, b) and (b, a) are mirror partners too
        diag = (ai2 == aj2) & np.all(R2 == 0, axis=1)
        swap = diag & (li2 > lj2)
        li2, lj2 = np.where(swap, lj2, li2), np.where(swap, li2, lj2)
        if swap.any():
            vals[swap] = _adjoint_entries(vals[swap], spin)
        # edges
        ukey, inv = unique_columns([R2[:, 0], R2[:, 1], R2[:, 2], ai2, aj2])
        ei, ej, eR = ukey[:, 3], ukey[:, 4], ukey[:, :3]
        sizes = norb[ei] * norb[ej]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        flat = offsets[inv] + li2 * norb[aj2] + lj2
        shape = (int(offsets[-1]),) + spin_shape(spin)
        dtype = np.complex128 if (spin == "spinor" or np.iscomplexobj(values)) else np.float64
        n_flat = int(offsets[-1])
        cnt = np.bincount(flat, minlength=n_flat)
        if dtype == np.float64 and vals.ndim == 1:  # bincount: an order of magnitude faster than np.add.at
            acc = np.bincount(flat, weights=vals, minlength=n_flat)
        else:
            acc = np.zeros(shape, dtype=dtype)
            np.add.at(acc, flat, vals)
        if np.any(cnt > 2):
            raise ValueError("duplicate matrix entries (same row, column and R given twice)")
        nz = cnt > 0
        cshape = (-1,) + (1,) * len(spin_shape(spin))
        acc[nz] = acc[nz] / cnt[nz].reshape(cshape)
        # hermiticity error of pairs given twice: |v1 - v2| = 2 |v1 - mean|
        herm = 0.0
        two = cnt[flat] == 2
        if two.any():
            herm = float(2 * np.max(np.abs(vals[two] - acc[flat[two]])))
        out = cls(norb, ei, ej, eR, offsets, acc, spin, hermiticity_error=herm)
        out._hermitize_diagonal()
        return out

    def _hermitize_diagonal(self) -> None:
        """Make the on-site (i, i, R = 0) blocks exactly hermitian.

        Built by :meth:`from_coo`, these blocks hold their upper triangle (the lower
        one was folded onto it); the lower triangle is set to its adjoint and the
        diagonal to its hermitian part.
        """
        on = np.nonzero(self.onsite_blocks())[0]
        sshape = spin_shape(self.spin)
        for e in on:
            n = self.norb[self.edge_i[e]]
            sl = slice(self.offsets[e], self.offsets[e + 1])
            b = self.data[sl].reshape((n, n) + sshape)
            upper = np.triu(np.ones((n, n), dtype=bool), 1)
            bt = _adjoint_entries(np.swapaxes(b, 0, 1), self.spin)
            full = np.where(upper.reshape((n, n) + (1,) * len(sshape)), b, bt)
            full = 0.5 * (full + _adjoint_entries(np.swapaxes(full, 0, 1), self.spin))
            self.data[sl] = full.reshape((n * n,) + sshape)

    # ------------------------------------------------------------------ expansion
    def to_coo(self, full: bool = True, with_R: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Orbital-level entries (rows, cols, R, values); with full=True both halves.

        The diagonal blocks appear once (they are their own mirror). ``with_R=False`` leaves out the
        (nnz, 3) array of R (None), which is the biggest of the four: :meth:`entry_R_index` gives an index instead.
        """
        edge, lr, lc = self.entry_index()
        aoff = self.atom_offsets
        rows = aoff[self.edge_i[edge]] + lr
        cols = aoff[self.edge_j[edge]] + lc
        R = self.R[edge] if with_R else None
        vals = self.data
        if not full:
            return rows, cols, R, vals
        onsite = self.onsite_blocks()[edge]
        m = ~onsite
        return (
            np.concatenate([rows, cols[m]]),
            np.concatenate([cols, rows[m]]),
            np.concatenate([R, -R[m]]) if with_R else None,
            np.concatenate([vals, _adjoint_entries(vals[m], self.spin)]),
        )

    def entry_R_index(self, full: bool = True, repeat: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(distinct R (m, 3) sorted lexicographically, the index into them of every entry of
        :meth:`to_coo` (``full``), each repeated ``repeat`` times as in :meth:`to_spinor_coo`):
        ``unique_rows`` of to_coo's R, found on the blocks instead of the entries."""
        edge = self.entry_index()[0]
        if not full:
            uR, inv = unique_rows(self.R)
            idx = inv[edge]
        else:  # blocks: the stored ones, then the mirrors (−R) of the off-site ones, as to_coo orders entries
            off = ~self.onsite_blocks()
            uR, inv = unique_rows(np.concatenate([self.R, -self.R[off]]))
            mirror = np.full(self.n_edges, -1)
            mirror[off] = self.n_edges + np.arange(int(off.sum()))
            idx = np.concatenate([inv[edge], inv[mirror[edge[off[edge]]]]])
        return uR, (np.repeat(idx, repeat) if repeat > 1 else idx)

    def full_edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The block list of both halves without the data: (edge_i, edge_j, R, offsets, mir), where
        mir are the stored edges whose mirrors are appended (in that order) after the stored ones."""
        onsite = self.onsite_blocks()
        mir = np.nonzero(~onsite)[0]
        ei = np.concatenate([self.edge_i, self.edge_j[mir]])
        ej = np.concatenate([self.edge_j, self.edge_i[mir]])
        R = np.concatenate([self.R, -self.R[mir]])
        sizes = self.norb[ei] * self.norb[ej]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return ei, ej, R, offsets, mir

    def full_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Both halves as blocks: (edge_i, edge_j, R, offsets, data), mirrors appended after the stored edges.

        The on-site blocks (i = j, R = 0) appear once.
        """
        ei, ej, R, offsets, mir = self.full_edges()
        edge, lr, lc = self.entry_index()
        # position of every stored entry inside its mirror block (transposed)
        new_of = np.full(self.n_edges, -1)
        new_of[mir] = self.n_edges + np.arange(len(mir))
        has = new_of[edge] >= 0
        src = np.nonzero(has)[0]
        e2 = new_of[edge[src]]
        ni = self.norb[self.edge_i[edge[src]]]
        dst = offsets[e2] + lc[src] * ni + lr[src]
        data = np.empty((int(offsets[-1]),) + self.data.shape[1:], dtype=self.data.dtype)
        data[: len(self.data)] = self.data
        data[dst] = _adjoint_entries(self.data[src], self.spin)
        return ei, ej, R, offsets, data

    @classmethod
    def from_full_blocks(cls, norb, ei, ej, R, offsets, data, spin: str) -> BlockSparse:
        """Keep the stored half of a complete block list (inverse of :meth:`full_blocks`)."""
        keep = np.nonzero(is_canonical_half(ei, ej, R))[0]
        sizes = np.diff(offsets)[keep]
        new_off = np.concatenate([[0], np.cumsum(sizes)])
        idx = (np.repeat(offsets[keep] - new_off[:-1], sizes) + np.arange(int(new_off[-1]))) if len(keep) else np.zeros(0, int)
        return cls(norb, ei[keep], ej[keep], R[keep], new_off, data[idx], spin)

    def permute_atoms(self, order: np.ndarray) -> BlockSparse:
        """Relabel atoms: new atom a is old atom ``order[a]`` (positions unchanged, so R is too)."""
        order = np.asarray(order, dtype=np.int64)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        ei, ej, R, off, data = self.full_blocks()
        return BlockSparse.from_full_blocks(self.norb[order], inv[ei], inv[ej], R, off, data, self.spin)

    def to_spinor_coo(self, with_R: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Full entries in a spin-interleaved basis (index 2μ + s), for any layout.

        'none' is expanded as M ⊗ 1, 'collinear' as diag(up, down). Each orbital entry becomes
        ``spinor_repeat`` entries; ``with_R=False``: R is None (see :meth:`entry_R_index`).
        """
        rows, cols, R, vals = self.to_coo(full=True, with_R=with_R)
        n = len(rows)
        if self.spin == "spinor":
            v = vals.reshape(n, 4)
            s = np.array([0, 0, 1, 1])
            t = np.array([0, 1, 0, 1])
        elif self.spin == "collinear":
            v = vals
            s = t = np.array([0, 1])
        else:
            v = np.stack([vals, vals], axis=1)
            s = t = np.array([0, 1])
        k = len(s)
        r2 = (2 * rows[:, None] + s[None, :]).reshape(-1)
        c2 = (2 * cols[:, None] + t[None, :]).reshape(-1)
        return r2, c2, (np.repeat(R, k, axis=0) if with_R else None), v.reshape(-1)

    @property
    def spinor_repeat(self) -> int:
        """Spin-interleaved entries per orbital entry in :meth:`to_spinor_coo`."""
        return 4 if self.spin == "spinor" else 2

    # ------------------------------------------------------------------ algebra
    def with_data(self, data: np.ndarray, spin: str | None = None) -> BlockSparse:
        """Same sparsity pattern, new values."""
        return BlockSparse(self.norb, self.edge_i, self.edge_j, self.R, self.offsets, data, spin or self.spin)

    def same_pattern(self, other: BlockSparse) -> bool:
        return (
            np.array_equal(self.norb, other.norb)
            and np.array_equal(self.edge_i, other.edge_i)
            and np.array_equal(self.edge_j, other.edge_j)
            and np.array_equal(self.R, other.R)
        )

    def aligned_to(self, other: BlockSparse) -> BlockSparse:
        """This matrix on the sparsity pattern of ``other`` (blocks missing here are zero).

        Blocks present here but absent from ``other`` are dropped.
        """
        if self.same_pattern(other):
            return self
        return self.aligned_to_edges(other.edge_i, other.edge_j, other.R)

    def aligned_to_edges(self, ei: np.ndarray, ej: np.ndarray, R: np.ndarray) -> BlockSparse:
        """This matrix on the stored edges (ei, ej, R) (vectorised key matching; absent blocks are zero)."""
        ei, ej, R = np.asarray(ei), np.asarray(ej), np.asarray(R).reshape(-1, 3)
        if np.array_equal(ei, self.edge_i) and np.array_equal(ej, self.edge_j) and np.array_equal(R, self.R):
            return self
        keys_self = np.stack([self.edge_i, self.edge_j, *self.R.T], 1)
        keys_new = np.stack([ei, ej, *R.T], 1)
        allk, inv = unique_rows(np.concatenate([keys_self, keys_new]))
        where = np.full(len(allk), -1)
        where[inv[: len(keys_self)]] = np.arange(len(keys_self))
        src = where[inv[len(keys_self) :]]  # (E_new,) index into self or -1
        sizes = self.norb[ei] * self.norb[ej]
        off = np.concatenate([[0], np.cumsum(sizes)])
        data = np.zeros((int(off[-1]),) + spin_shape(self.spin), dtype=self.data.dtype)
        have = np.nonzero(src >= 0)[0]
        if len(have):
            sz = sizes[have]
            within = np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz)
            data[np.repeat(off[have], sz) + within] = self.data[np.repeat(self.offsets[src[have]], sz) + within]
        return BlockSparse(self.norb, ei, ej, R, off, data, self.spin)

    def transform_orbitals(self, kinds: np.ndarray, per_kind: list[np.ndarray]) -> BlockSparse:
        """Apply B_ij -> M_ki @ B_ij @ M_kj^T with per_kind[kinds[atom]] (orthogonal, (n, n)).

        Vectorised over the blocks of each pair of kinds.
        """
        kinds = np.asarray(kinds)
        out = np.empty_like(self.data)
        ki, kj = kinds[self.edge_i], kinds[self.edge_j]
        sshape = spin_shape(self.spin)
        for a in np.unique(ki):
            for b in np.unique(kj):
                sel = np.nonzero((ki == a) & (kj == b))[0]
                if len(sel) == 0:
                    continue
                ma, mb = per_kind[a], per_kind[b]
                na, nb = ma.shape[0], mb.shape[0]
                idx = (self.offsets[sel][:, None] + np.arange(na * nb)[None, :]).reshape(-1)
                blk = self.data[idx].reshape((len(sel), na, nb) + sshape)
                res = np.einsum("ab,ebc...,dc->ead...", ma, blk, mb, optimize=True)
                out[idx] = res.reshape((-1,) + sshape)
        return self.with_data(out)

    def max_abs_diff(self, other: BlockSparse) -> float:
        """Largest |self - other| over the union of both patterns."""
        a = self.aligned_to(other) if not self.same_pattern(other) else self
        d = float(np.max(np.abs(a.data - other.data), initial=0.0))
        b = other.aligned_to(self)
        return max(d, float(np.max(np.abs(self.data - b.data), initial=0.0)))


def check_hermitian(m: BlockSparse, source: str, rtol: float = 1e-5) -> BlockSparse:
    """``m`` itself, or ParseError naming ``source`` when its two halves (M(−R) vs M(R)†, both given in a
    file) disagree by more than ``rtol`` relative to its largest entry (at least 1): a corrupted file."""
    from ..errors import ParseError

    big = float(np.max(np.abs(m.data), initial=0.0))
    if m.hermiticity_error > rtol * max(big, 1.0):
        raise ParseError(source, f"matrix is not hermitian: M(-R) and M(R)^T differ by {m.hermiticity_error:.3g} "
                                 "(corrupted file?)")
    return m


def spinor_from_spin_entries(
    norb: np.ndarray, rows: np.ndarray, cols: np.ndarray, R: np.ndarray, s: np.ndarray, t: np.ndarray,
    values: np.ndarray,
) -> BlockSparse:
    """Spinor BlockSparse from entries <φ_row s| M |φ_col t, R> given one spin component at a time.

    rows, cols: orbital indices (without spin); s, t: spin indices (0 = up, 1 = down); values complex.
    Entries of both halves may be given (mirror pairs are averaged as in :meth:`BlockSparse.from_coo`);
    spin components never given are zero.
    """
    R = np.asarray(R, dtype=np.int64).reshape(-1, 3)
    key = np.stack([R[:, 0], R[:, 1], R[:, 2], np.asarray(rows), np.asarray(cols)], 1)
    keys, inv = unique_rows(key)
    vals = np.zeros((len(keys), 2, 2), dtype=np.complex128)
    vals[inv, np.asarray(s), np.asarray(t)] = values
    return BlockSparse.from_coo(norb, keys[:, 3], keys[:, 4], keys[:, :3], vals, "spinor")


def spinor_to_ab(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spinor entries (…, 2, 2) → real (a (…), b (…, 3)) with M = a ⊗ 1 + i b·σ.

    Exact for a time-reversal-symmetric Hamiltonian; otherwise the time-reversal-even part.
    b_c = ½ Im Tr(σ_c M), written out per Pauli matrix.
    """
    d00, d01, d10, d11 = data[..., 0, 0], data[..., 0, 1], data[..., 1, 0], data[..., 1, 1]
    a = 0.5 * (d00 + d11).real
    b = np.stack([0.5 * (d01 + d10).imag, 0.5 * (d01 - d10).real, 0.5 * (d00 - d11).imag], axis=-1)
    return a, b


def ab_to_spinor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Real (a (n,), b (n, 3)) → spinor entries (n, 2, 2) = a ⊗ 1 + i b·σ."""
    from .sph import PAULI

    return a[:, None, None] * np.eye(2) + 1j * np.einsum("nc,cst->nst", b, PAULI)
