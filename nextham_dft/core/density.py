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

from .blocks import BlockSparse
from .kspace import KAssembler, Smearing, fermi_level, solve_generalized
from .sph import PAULI, e3nn_harmonics


def density_matrix(h: BlockSparse, s: BlockSparse, kfrac: np.ndarray, weights: np.ndarray, nelec: float,
                   smearing: Smearing, pattern: BlockSparse | None = None) -> tuple[BlockSparse, float]:
    """DM(R) of H on a full k-mesh (weights sum to 1) with the run's smearing; returns (DM, E_F in H's units).

    The k-points must be the full mesh (not reduced by symmetry). DM is returned on the sparsity
    pattern of ``pattern`` (default: S's), with H's spin layout.
    """
    if h.spin == "collinear":
        return _collinear_density_matrix(h, s, kfrac, weights, nelec, smearing, pattern)
    spinor = h.spin == "spinor"
    pattern = pattern if pattern is not None else s
    kfrac = np.atleast_2d(np.asarray(kfrac, dtype=float))
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    ha, sa = KAssembler(h, spinor=spinor), KAssembler(s, spinor=spinor)
    e, c = [], []
    for a in range(0, len(kfrac), 64):
        ee, cc = solve_generalized(ha(kfrac[a : a + 64]), sa(kfrac[a : a + 64]), vectors=True, kpoints=kfrac[a : a + 64])
        e.append(ee)
        c.append(cc)
    eig, vec = np.concatenate(e), np.concatenate(c)  # (nk, nb), (nk, dim, nb)
    g = 1.0 if spinor else 2.0
    ef = fermi_level(eig, w, nelec, smearing, g)
    occ = g * smearing.occupation(eig, ef) * w[:, None]  # (nk, nb)
    pat = pattern if not spinor or pattern.spin == "spinor" else pattern.with_data(
        np.zeros((len(pattern.data), 2, 2), complex), "spinor")
    rows, cols, R, _ = pat.to_coo(full=False)
    if spinor:
        r2 = (2 * rows[:, None] + np.array([0, 0, 1, 1])).reshape(-1)
        c2 = (2 * cols[:, None] + np.array([0, 1, 0, 1])).reshape(-1)
        R2 = np.repeat(R, 4, axis=0)
    else:
        r2, c2, R2 = rows, cols, R
    out = np.zeros(len(r2), dtype=complex)
    for k in range(len(kfrac)):
        # Σ_n f c*_i c_j for the needed (i, j) only, then the phase of each entry's R
        ci = vec[k][r2]  # (nnz, nb)
        cj = vec[k][c2]
        out += np.einsum("en,en,n->e", ci.conj(), cj, occ[k]) * np.exp(2j * np.pi * (R2 @ kfrac[k]))
    if spinor:
        data = out.reshape(-1, 2, 2)
    else:
        data = out.real
    dm = BlockSparse(pat.norb, pat.edge_i, pat.edge_j, pat.R, pat.offsets, data, "spinor" if spinor else "none")
    return dm, float(ef)


def _collinear_density_matrix(h, s, kfrac, weights, nelec, smearing, pattern):
    """Both spin channels with one Fermi level (the electron count is shared): DM layout 'collinear'."""
    kfrac = np.atleast_2d(np.asarray(kfrac, dtype=float))
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    chans = [h.with_data(h.data[:, c].copy(), "none") for c in (0, 1)]
    eig = np.stack([_eigs(ch, s, kfrac) for ch in chans])
    ef = fermi_level(eig, w, nelec, smearing, 1.0)
    parts = [_dm_at_fermi(ch, s, kfrac, w, ef, smearing, 1.0, pattern if pattern is not None else s) for ch in chans]
    data = np.stack([p.data for p in parts], axis=1)
    p0 = parts[0]
    return BlockSparse(p0.norb, p0.edge_i, p0.edge_j, p0.R, p0.offsets, data, "collinear"), float(ef)


def _eigs(h: BlockSparse, s: BlockSparse, kfrac: np.ndarray) -> np.ndarray:
    ha, sa = KAssembler(h), KAssembler(s)
    return np.concatenate([solve_generalized(ha(kfrac[a : a + 64]), sa(kfrac[a : a + 64]), kpoints=kfrac[a : a + 64])
                           for a in range(0, len(kfrac), 64)])


def _dm_at_fermi(h, s, kfrac, w, ef, smearing, g, pattern) -> BlockSparse:
    """Spinless DM of one channel at a given Fermi level (degeneracy g)."""
    ha, sa = KAssembler(h), KAssembler(s)
    rows, cols, R, _ = pattern.to_coo(full=False)
    out = np.zeros(len(rows), dtype=complex)
    for a in range(0, len(kfrac), 64):
        kk = kfrac[a : a + 64]
        e, c = solve_generalized(ha(kk), sa(kk), vectors=True, kpoints=kk)
        occ = g * smearing.occupation(e, ef) * w[a : a + 64, None]
        for k in range(len(kk)):
            out += np.einsum("en,en,n->e", c[k][rows].conj(), c[k][cols], occ[k]) * np.exp(2j * np.pi * (R @ kk[k]))
    return BlockSparse(pattern.norb, pattern.edge_i, pattern.edge_j, pattern.R, pattern.offsets, out.real, "none")


def electron_count(dm: BlockSparse, s: BlockSparse) -> float:
    """Σ_R Σ_ij DM(R)_ij S(R)_ij (both halves), i.e. Tr(DM·S): the number of electrons."""
    d = dm.aligned_to(s)
    w = np.where((s.edge_i == s.edge_j) & np.all(s.R == 0, axis=1), 1.0, 2.0)
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


def _orbital_values(basis, d: np.ndarray) -> np.ndarray:
    """(npts, norb) values of a species' orbitals (canonical order) at displacement vectors d (Å)."""
    r = np.linalg.norm(d, axis=1)
    out = np.zeros((len(d), basis.norb))
    cache: dict[int, np.ndarray] = {}
    for sh, sl in zip(basis.shells, basis.shell_slices()):
        if len(sh.r) == 0:
            raise ValueError(f"{basis.source}: no radial table for the {sh.l}-shell (cannot build ρ(r))")
        rad = np.interp(r, sh.r, sh.f, right=0.0)
        rad[r > sh.rcut] = 0.0
        if sh.l not in cache:
            dd = np.where(r[:, None] > 1e-12, d, np.array([0.0, 0.0, 1.0]))
            cache[sh.l] = e3nn_harmonics(sh.l, dd)
        out[:, sl] = rad[:, None] * cache[sh.l]
    return out


def density_on_grid(system, dm: BlockSparse, shape: tuple[int, int, int], block: int = 6) -> np.ndarray:
    """ρ(r) (and for spinor DM the magnetisation) on the periodic grid of the cell, e/Å³.

    Returns (nx, ny, nz) for a spinless DM, (2, nx, ny, nz) = (ρ↑, ρ↓) for a collinear one,
    (4, nx, ny, nz) = (ρ, m_x, m_y, m_z) for spinors.
    Works block by block of grid points: for each block the atom images whose orbitals reach it,
    their orbital values Φ (points × orbitals) and the DM between those images; ρ = Φ·DM·Φᵀ.
    """
    if dm.spin == "collinear":  # (2, nx, ny, nz): spin up, spin down
        return np.stack([density_on_grid(system, dm.with_data(dm.data[:, c].copy(), "none"), shape, block)
                         for c in (0, 1)])
    lat = np.asarray(system.lattice)
    pts = grid_points(lat, shape)
    nx, ny, nz = shape
    spinor = dm.spin == "spinor"
    ncomp = 4 if spinor else 1
    rho = np.zeros((ncomp, nx, ny, nz))
    bases = [system.bases[k] for k in system.kinds]
    rc = np.array([b.rcut for b in bases])
    # all images of every atom whose sphere can reach the cell
    recip = np.linalg.inv(lat).T  # rows: reciprocal vectors (no 2π); plane spacing = 1/|b|
    nmax = np.ceil(rc.max() * np.linalg.norm(recip, axis=1)).astype(int) + 1
    T = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in nmax], indexing="ij"), -1).reshape(-1, 3)
    img_atom = np.repeat(np.arange(system.n_atoms), len(T))
    img_T = np.tile(T, (system.n_atoms, 1))
    img_pos = system.positions[img_atom] + img_T @ lat
    # DM blocks by key
    ei, ej, R, off, data = dm.full_blocks()
    key = {(int(a), int(b), int(r0), int(r1), int(r2)): e for e, (a, b, (r0, r1, r2)) in enumerate(zip(ei, ej, R))}
    norb = dm.norb
    for bx in range(0, nx, block):
        for by in range(0, ny, block):
            for bz in range(0, nz, block):
                p = pts[bx : bx + block, by : by + block, bz : bz + block].reshape(-1, 3)
                if len(p) == 0:
                    continue
                centre = p.mean(0)
                radius = np.linalg.norm(p - centre, axis=1).max()
                near = np.nonzero(np.linalg.norm(img_pos - centre, axis=1) < rc[img_atom] + radius)[0]
                if len(near) == 0:
                    continue
                phis = [_orbital_values(bases[img_atom[a]], p - img_pos[a]) for a in near]
                Phi = np.concatenate(phis, axis=1)
                starts = np.concatenate([[0], np.cumsum([norb[img_atom[a]] for a in near])])
                M = starts[-1]
                D = np.zeros((M, M) + ((2, 2) if spinor else ()), dtype=complex if spinor else float)
                for x, a in enumerate(near):
                    for y, b in enumerate(near):
                        Rab = img_T[b] - img_T[a]
                        e = key.get((int(img_atom[a]), int(img_atom[b]), int(Rab[0]), int(Rab[1]), int(Rab[2])))
                        if e is None:
                            continue
                        ni, nj = norb[img_atom[a]], norb[img_atom[b]]
                        D[starts[x] : starts[x + 1], starts[y] : starts[y + 1]] = data[off[e] : off[e + 1]].reshape(
                            (ni, nj) + D.shape[2:])
                sl = (slice(None), slice(bx, bx + block), slice(by, by + block), slice(bz, bz + block))
                bshape = rho[sl].shape[1:]
                if spinor:
                    comps = [D[..., 0, 0] + D[..., 1, 1]] + [np.einsum("st,mnst->mn", PAULI[c], D) for c in range(3)]
                    vals = [np.einsum("pm,mn,pn->p", Phi, cm.real, Phi) for cm in comps]
                    rho[sl] = np.stack(vals).reshape((4,) + bshape)
                else:
                    rho[sl] = np.einsum("pm,mn,pn->p", Phi, D, Phi).reshape((1,) + bshape)
    return rho if spinor else rho[0]
