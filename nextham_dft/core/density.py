"""Density matrix DM(R) from a Hamiltonian, and the real-space density ρ(r) it describes.

Conventions (those of :mod:`.kspace`): ψ_nk(r) = Σ_{j,R} c_j e^{i2πk·R} φ_j(r − τ_j − R), and

    DM(R)_ij = g Σ_k w_k Σ_n f_nk c*_i,nk c_j,nk e^{i2πk·R},

so that the band energy is Σ_{R,ij} DM(R)_ij H(R)_ij, the electron count Σ DM(R)_ij S(R)_ij and
the density ρ(r) = Σ_{R,ij} DM(R)_ij φ_i(r − τ_i) φ_j(r − τ_j − R) (summed over cell
translations of r). g = 2 without spin, 1 per collinear channel or for spinors. For spinors the
entries are 2×2 (s, t) with c_i → c_{i s}, c_j → c_{j t}; the charge is ρ = Σ DM_{ss} φφ and the
magnetisation m_a = Σ_{st} σ_a[s, t] DM_{st} φφ.

Units: DM dimensionless (electrons); ρ in e/Å³ with φ from the radial tables in Å^-3/2.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .blocks import BlockSparse
from .kspace import FixedOverlap, KAssembler, Smearing, fermi_level, solve_generalized
from .sph import PAULI, e3nn_harmonics


def density_matrix(h: BlockSparse, s: BlockSparse, kfrac: np.ndarray, weights: np.ndarray, nelec: float,
                   smearing: Smearing, pattern: BlockSparse | None = None,
                   charge_only: bool = False, overlap: FixedOverlap | None = None) -> tuple[BlockSparse, float]:
    """DM(R) of H on a full k-mesh (weights sum to 1) with the run's smearing; returns (DM, E_F in H's units).

    The k-points must be the full mesh (not reduced by symmetry). DM is returned on the sparsity
    pattern of ``pattern`` (default: S's), with H's spin layout; the two channels of a collinear H
    share one Fermi level. ``charge_only`` (spinor H): the spinless DM of the charge alone, the real part
    of Σ_s DM_ss (what ρ needs; a quarter of the entries, and :func:`density_on_grid` then computes one
    component instead of four). ``overlap``: S's factors at these k-points, formed once (an SCF's).
    """
    kfrac = np.atleast_2d(np.asarray(kfrac, dtype=float))
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    pattern = pattern if pattern is not None else s
    spinor = h.spin == "spinor"
    channels = [h.with_data(h.data[:, c].copy(), "none") for c in (0, 1)] if h.spin == "collinear" else [h]
    if overlap is not None and not (overlap.spinor == spinor and overlap.kfrac.shape == kfrac.shape
                                    and np.array_equal(overlap.kfrac, kfrac)):
        raise ValueError("the overlap factors were formed at other k-points or spin layout")
    solved = [overlap.eigensystem(ch) if overlap is not None else _eigensystem(ch, s, kfrac, spinor) for ch in channels]
    g = 2.0 if h.spin == "none" else 1.0
    eig = np.stack([e for e, _ in solved]) if len(solved) == 2 else solved[0][0]
    ef = fermi_level(eig, w, nelec, smearing, g)
    rows, cols, _, _ = pattern.to_coo(full=False, with_R=False)
    R = pattern.entry_R_index(full=False)  # (distinct R, each entry's index into them)
    four = spinor and not charge_only
    if four:  # the four spin components of every stored entry, spin-interleaved indices 2μ + s
        rows = (2 * rows[:, None] + np.array([0, 0, 1, 1])).reshape(-1)
        cols = (2 * cols[:, None] + np.array([0, 1, 0, 1])).reshape(-1)
        R = (R[0], np.repeat(R[1], 4))
    parts = [_accumulate(vec, g * smearing.occupation(e, ef) * w[:, None], kfrac, rows, cols, R,
                         spin_trace=spinor and charge_only) for e, vec in solved]
    if four:
        data, layout = parts[0].reshape(-1, 2, 2), "spinor"
    elif len(parts) == 2:
        data, layout = np.stack([p.real for p in parts], axis=1), "collinear"
    else:
        data, layout = parts[0].real, "none"
    return BlockSparse(pattern.norb, pattern.edge_i, pattern.edge_j, pattern.R, pattern.offsets, data, layout), float(ef)


def _eigensystem(h: BlockSparse, s: BlockSparse, kfrac: np.ndarray, spinor: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (nk, nb) and S-orthonormal eigenvectors (nk, dim, nb) at every k (64 k-points at a time)."""
    ha, sa = KAssembler(h, spinor=spinor), KAssembler(s, spinor=spinor)
    e, c = [], []
    for a in range(0, len(kfrac), 64):
        kk = kfrac[a : a + 64]
        ee, cc = solve_generalized(ha(kk), sa(kk), vectors=True, kpoints=kk)
        e.append(ee)
        c.append(cc)
    return np.concatenate(e), np.concatenate(c)


def _accumulate(vec: np.ndarray, occ: np.ndarray, kfrac: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                R: tuple[np.ndarray, np.ndarray], dense_max: int = 4096, spin_trace: bool = False) -> np.ndarray:
    """Σ_k Σ_n occ_nk c*_row,nk c_col,nk e^{i2πk·R} for the requested entries only (loop over k only); R: the
    distinct lattice vectors (m, 3) and each entry's index into them.

    Up to ``dense_max`` basis functions DM(k) = (c* occ) cᵀ is formed by one matrix product per k and the
    entries gathered from it (a product of dim² · nb against nnz · nb for the entry-wise sum: 10-50×
    faster on the cells of the shared data); larger bases sum entry by entry, without a dim² array.
    ``spin_trace``: spinor eigenvectors (interleaved index 2μ + s), rows and cols orbital indices μ; the
    entries are Σ_s of the (2μ + s, 2ν + s) ones (the charge)."""
    out = np.zeros(len(rows), dtype=complex)
    dim = vec.shape[1]
    pairs = [(2 * rows + s, 2 * cols + s) for s in (0, 1)] if spin_trace else [(rows, cols)]
    uR, ridx = R
    phases = np.exp(2j * np.pi * (np.asarray(kfrac) @ uR.T))  # (nk, distinct R)
    for k in range(len(kfrac)):
        phase = phases[k, ridx]
        if dim <= dense_max:
            dmk = (vec[k].conj() * occ[k]) @ vec[k].T
            out += sum(dmk[r, c] for r, c in pairs) * phase
        else:
            out += sum(np.einsum("en,en,n->e", vec[k][r].conj(), vec[k][c], occ[k]) for r, c in pairs) * phase
    return out


def electron_count(dm: BlockSparse, s: BlockSparse) -> float:
    """Σ_R Σ_ij DM(R)_ij S(R)_ij (both halves), i.e. Tr(DM·S): the number of electrons."""
    d = dm.aligned_to(s)
    w = np.where(s.onsite_blocks(), 1.0, 2.0)
    sizes = np.diff(s.offsets)
    wt = np.repeat(w, sizes)
    dd = {"none": lambda x: x, "collinear": lambda x: x.sum(axis=1),
          "spinor": lambda x: np.trace(x, axis1=1, axis2=2)}[d.spin](d.data)
    return float(np.sum(wt * (dd * s.data).real))


def grid_points(lattice: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Cartesian points (nx, ny, nz, 3) of the grid r = (i/nx) a1 + (j/ny) a2 + (k/nz) a3 (Å)."""
    f = [np.arange(n) / n for n in shape]
    F = np.stack(np.meshgrid(*f, indexing="ij"), -1)
    return F @ np.asarray(lattice)


def periodic_images(lattice: np.ndarray, centres: np.ndarray, reach: float,
                    margin: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner (M,), T (M, 3) integer, position (M, 3) Å) of the periodic images of the centres that a
    sphere of radius ``reach`` (Å) around them can bring to the cell, plus ``margin`` cells each way."""
    recip = np.linalg.inv(lattice).T  # rows: reciprocal vectors (no 2π); plane spacing = 1/|b|
    nmax = np.ceil(reach * np.linalg.norm(recip, axis=1)).astype(int) + margin
    T = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in nmax], indexing="ij"), -1).reshape(-1, 3)
    owner = np.repeat(np.arange(len(centres)), len(T))
    TT = np.tile(T, (len(centres), 1))
    return owner, TT, centres[owner] + TT @ lattice


def periodic_pairs(lattice: np.ndarray, positions: np.ndarray, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, vec Å) of every pair of positions (periodic images included, a position and itself excluded)
    closer than ``r_max`` Å, vec = r_src + T − r_dst; pairs from a k-d tree of the images (:func:`periodic_images`)."""
    pos = np.asarray(positions, dtype=float)
    owner, _t, images = periodic_images(np.asarray(lattice, dtype=float), pos, r_max, margin=1)
    pairs = cKDTree(pos).sparse_distance_matrix(cKDTree(images), r_max, output_type="ndarray")
    pairs = pairs[pairs["v"] > 1e-8]
    dst, img = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    return owner[img], dst, (images[img] - pos[dst]).reshape(-1, 3)


def _orbital_values(basis, d: np.ndarray) -> np.ndarray:
    """(npts, norb) values of a species' orbitals (canonical order) at displacement vectors d (Å); zero
    beyond each shell's cutoff (only the points within the species' cutoff are evaluated)."""
    r = np.linalg.norm(d, axis=1)
    out = np.zeros((len(d), basis.norb))
    inside = np.nonzero(r <= basis.rcut)[0]
    if len(inside) == 0:
        return out
    r_in = r[inside]
    cache: dict[int, np.ndarray] = {}
    for sh, sl in zip(basis.shells, basis.shell_slices()):
        if len(sh.r) == 0:
            raise ValueError(f"{basis.source}: no radial table for the {sh.l}-shell (cannot build ρ(r))")
        rad = np.interp(r_in, sh.r, sh.f, right=0.0)
        rad[r_in > sh.rcut] = 0.0
        if sh.l not in cache:
            dd = np.where(r_in[:, None] > 1e-12, d[inside], np.array([0.0, 0.0, 1.0]))
            cache[sh.l] = e3nn_harmonics(sh.l, dd)
        out[inside, sl] = rad[:, None] * cache[sh.l]
    return out


class _PairLookup:
    """Vectorised (i, j, R) → index of the block in ``full_blocks()`` order, or the index of the zero block."""

    def __init__(self, ei: np.ndarray, ej: np.ndarray, R: np.ndarray) -> None:
        self.n_atoms = int(max(ei.max(initial=0), ej.max(initial=0))) + 1
        self.span = int(np.abs(R).max(initial=0))
        self.keys = self._key(ei, ej, R)
        self.order = np.argsort(self.keys)
        self.sorted = self.keys[self.order]
        self.missing = len(ei)

    def _key(self, i, j, R) -> np.ndarray:
        w = 2 * self.span + 1
        r = np.clip(R + self.span, 0, w - 1)
        inside = np.all(np.abs(R) <= self.span, axis=-1)
        k = ((np.asarray(i) * self.n_atoms + np.asarray(j)) * w + r[..., 0]) * w * w + r[..., 1] * w + r[..., 2]
        return np.where(inside, k, -1)

    def __call__(self, i, j, R) -> np.ndarray:
        k = self._key(i, j, R)
        pos = np.clip(np.searchsorted(self.sorted, k), 0, max(len(self.sorted) - 1, 0))
        hit = (len(self.sorted) > 0) & (self.sorted[pos] == k) & (k >= 0)
        return np.where(hit, self.order[pos], self.missing)


class EntryPlan:
    """Where the orbital pairs of a group of atom images lie among a pattern's stored entries.

    For images at integer lattice vectors T (atoms ``owner``), :meth:`index` gives the (M, M) position of
    entry (a, b) — a an orbital of image x, b one of image y, M their orbitals in order — in the stored
    data of ``pattern``: the entry of block (owner_x, owner_y, T_y − T_x) when that block is stored, the
    stored entry (b, a) of the block it mirrors when it is a mirror, ``size`` (one past the entries: a zero
    or a discarded slot) where there is no block. A real symmetric matrix (a charge DM, the real parts of
    spinor DM components) is read through it as a dense (M, M) matrix; integrals are summed through it.
    """

    def __init__(self, pattern: BlockSparse) -> None:
        ei, ej, R, _off, mir = pattern.full_edges()
        self.edges = (pattern.edge_i, pattern.edge_j, pattern.R)
        self.lookup = _PairLookup(ei, ej, R)
        self.n_stored = pattern.n_edges
        self.norb = np.asarray(pattern.norb)
        self.size = int(pattern.offsets[-1])
        # per full-list block: its stored data offset (mirrors: the offset of the block they mirror)
        self.itype = np.int32 if self.size < 2**31 - 1 else np.int64  # positions (and their arithmetic) in this type
        self.start = np.concatenate([pattern.offsets[:-1], pattern.offsets[mir], [0]]).astype(self.itype)

    def serves(self, pattern: BlockSparse) -> bool:
        """Whether ``pattern`` has this plan's blocks (same edges, same order)."""
        return all(a.shape == b.shape and np.array_equal(a, b) for a, b in
                   zip(self.edges, (pattern.edge_i, pattern.edge_j, pattern.R)))

    def index(self, owner: np.ndarray, T: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """(M, M) int: the stored-entry position of every orbital pair of the images (see the class); of the
        pairs of ``columns`` alone (indices into the images' orbitals in order) when given."""
        e = self.lookup(owner[:, None], owner[None, :], T[None, :] - T[:, None])  # (n, n) full-list block
        n_img = self.norb[owner].astype(self.itype)
        img = np.repeat(np.arange(len(owner)), n_img)  # every orbital's image and its index within the image
        loc = (np.arange(len(img)) - np.repeat(np.cumsum(n_img) - n_img, n_img)).astype(self.itype)
        if columns is not None:
            img, loc = img[columns], loc[columns]
        E = e[img[:, None], img[None, :]]  # (M, M) the block of each orbital pair
        base = self.start[E]
        ni, nj = n_img[img][:, None], n_img[img][None, :]
        a, b = loc[:, None], loc[None, :]
        idx = np.where(E < self.n_stored, base + a * nj + b, base + b * ni + a)
        idx[E == self.lookup.missing] = self.size
        return idx


class GridOrbitals:
    """The orbitals of every atom image that reaches a block of points of the periodic grid
    origin + (n/N)·A (Å), block by block: what densities and potential integrals on the grid share.

    ``blocks()`` yields (index, near, columns, phi): the grid slices of the block, the images reaching it
    (indices into ``owner``/``T``/``pos``: atom, integer lattice vector, position), which of their orbitals
    (all of each image's in turn) are non-zero somewhere in the block, and those orbitals' values phi
    (points, len(columns)) in Å^-3/2. With ``keep_bytes`` the
    values are computed once and kept when they fit in that many bytes (an SCF evaluates them every
    iteration); ``nbytes`` says what is kept.
    """

    def __init__(self, system, shape: tuple[int, int, int], origin: np.ndarray | None = None, block: int = 6,
                 keep_bytes: int = 0) -> None:
        self.system = system
        self.shape = tuple(int(n) for n in shape)
        self.block = int(block)
        lat = np.asarray(system.lattice, dtype=float)
        self.origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
        self.points = self.origin + grid_points(lat, self.shape)
        self.rc = np.array([system.bases[k].rcut for k in system.kinds])
        self.owner, self.T, self.pos = periodic_images(lat, system.positions, float(self.rc.max()), margin=2)
        self.keep_bytes = int(keep_bytes)
        self._kept: list | None = None
        self._plans: list[tuple[EntryPlan, list[np.ndarray]]] = []
        if keep_bytes > 0:
            kept, total = [], 0
            for b in self._generate():
                total += b[3].nbytes
                if total > keep_bytes:
                    break
                kept.append(b)
            else:
                self._kept = kept

    @property
    def nbytes(self) -> int:
        return sum(b[3].nbytes for b in self._kept) if self._kept is not None else 0

    def blocks(self):
        return iter(self._kept) if self._kept is not None else self._generate()

    def blocks_with_entries(self, pattern: BlockSparse):
        """:meth:`blocks` with each block's :meth:`EntryPlan.index` into ``pattern``'s stored entries appended:
        ((index, near, columns, phi), where). The positions are kept beside kept orbital values when both fit
        in ``keep_bytes`` together, for the patterns an SCF reuses every iteration."""
        for plan, kept in self._plans:
            if plan.serves(pattern):
                return zip(self.blocks(), kept) if kept else self._with_plan(plan)
        plan = EntryPlan(pattern)
        if self._kept is None:
            return self._with_plan(plan)
        kept, total = [], self.nbytes + sum(x.nbytes for _, k in self._plans for x in k)
        for b in self._kept:
            kept.append(plan.index(self.owner[b[1]], self.T[b[1]], b[2]))
            total += kept[-1].nbytes
            if total > self.keep_bytes:
                kept = []
                break
        self._plans.append((plan, kept))
        return zip(self.blocks(), kept) if kept else self._with_plan(plan)

    def _with_plan(self, plan: EntryPlan):
        for b in self.blocks():
            yield b, plan.index(self.owner[b[1]], self.T[b[1]], b[2])

    def _generate(self):
        norb = np.array([self.system.bases[k].norb for k in self.system.kinds])
        for index, p, c, rad in grid_boxes(self.points, self.block):
            near = np.nonzero(np.linalg.norm(self.pos - c, axis=1) < self.rc[self.owner] + rad)[0]
            if len(near) == 0:
                continue
            col0 = np.concatenate([[0], np.cumsum(norb[self.owner[near]])])
            phi = image_orbitals(self.system, p, self.pos[near], self.owner[near], col0)
            # the orbitals that are zero at every point of the box (beyond their cutoff there) add nothing
            columns = np.flatnonzero(np.any(phi != 0.0, axis=0))
            if len(columns) == 0:
                continue
            yield index, near, columns, np.ascontiguousarray(phi[:, columns])


def grid_boxes(points: np.ndarray, block: int):
    """(index, p, centre, radius) for the sub-boxes of ``block`` points a side of a grid of ``points``
    (nx, ny, nz, 3) Å: the box's grid slices, its points (n, 3), their centre and the largest distance
    from it (what bounds the atoms whose functions can reach the box)."""
    nx, ny, nz = points.shape[:3]
    for bx in range(0, nx, block):
        for by in range(0, ny, block):
            for bz in range(0, nz, block):
                index = (slice(bx, bx + block), slice(by, by + block), slice(bz, bz + block))
                p = points[index].reshape(-1, 3)
                c = p.mean(0)
                yield index, p, c, float(np.linalg.norm(p - c, axis=1).max())


def image_orbitals(system, p: np.ndarray, pos: np.ndarray, owner: np.ndarray, col0: np.ndarray) -> np.ndarray:
    """(points, col0[-1]) the orbitals of the atom images at ``pos`` (owners ``owner``) at the points p
    (Å), image a's in columns col0[a]:col0[a + 1]; one evaluation per species for all its images."""
    kinds = np.asarray(system.kinds)[owner]
    phi = np.empty((len(p), int(col0[-1])))
    for kd in np.unique(kinds):
        sel = np.nonzero(kinds == kd)[0]
        basis = system.bases[kd]
        d = (p[None, :, :] - pos[sel][:, None, :]).reshape(-1, 3)
        vals = _orbital_values(basis, d).reshape(len(sel), len(p), basis.norb)
        cols = (col0[sel][:, None] + np.arange(basis.norb)).reshape(-1)
        phi[:, cols] = vals.transpose(1, 0, 2).reshape(len(p), -1)
    return phi


def density_on_grid(system, dm: BlockSparse, shape: tuple[int, int, int], block: int = 6,
                    origin: np.ndarray | None = None, orbitals: GridOrbitals | None = None) -> np.ndarray:
    """ρ(r) (and for spinor DM the magnetisation) on the periodic grid origin + (n/N)·A of the cell
    (origin default 0), e/Å³.

    Returns (nx, ny, nz) for a spinless DM, (2, nx, ny, nz) = (ρ↑, ρ↓) for a collinear one,
    (4, nx, ny, nz) = (ρ, m_x, m_y, m_z) for spinors.
    Works block by block of grid points (:class:`GridOrbitals`; pass one to reuse its orbital values):
    for each block the atom images whose orbitals reach it, their orbital values Φ (points × orbitals)
    and the DM between those images; ρ = Φ·DM·Φᵀ.
    """
    if dm.spin == "collinear":  # (2, nx, ny, nz): spin up, spin down
        return np.stack([density_on_grid(system, dm.with_data(dm.data[:, c].copy(), "none"), shape, block, origin,
                                         orbitals) for c in (0, 1)])
    grid = orbitals if orbitals is not None else GridOrbitals(system, shape, origin, block)
    spinor = dm.spin == "spinor"
    # the real parts of the stored entries per component (charge; spinor: charge and magnetisation — their
    # imaginary parts cancel against the mirror blocks, whose real parts are the transposed entries'), a zero
    # appended for absent blocks
    if spinor:
        comps = [dm.data[:, 0, 0] + dm.data[:, 1, 1]] + [np.einsum("st,est->e", PAULI[a], dm.data) for a in range(3)]
    else:
        comps = [dm.data]
    vec = np.zeros((len(comps), len(dm.data) + 1))
    for a, v in enumerate(comps):
        vec[a, :-1] = np.real(v)
    rho = np.zeros((len(comps),) + tuple(grid.shape))
    for (index, _near, _columns, phi), where in grid.blocks_with_entries(dm):
        D = vec[:, where]  # (ncomp, M, M): DM between every pair of the block's image orbitals
        vals = np.sum((phi[None] @ D) * phi[None], axis=2)  # ρ_c(p) = Φ_p · DM_c · Φ_p (BLAS)
        sl = (slice(None),) + index
        rho[sl] = vals.reshape(rho[sl].shape)
    return rho if spinor else rho[0]
