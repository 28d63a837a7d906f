"""Grid integrals of atom-centred local potentials (core.potential): the code's overlap reproduced,
a radial integral reproduced, and every symmetry exact (atom-anchored grids)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from nextham_dft.core.potential import overlap_by_quadrature, potential_integrals
from nextham_dft.registry import read_run
from nextham_dft.testing import rotate_matrix

from .conftest import EXAMPLE, need

SIGMAS = (0.3, 1.2)


@pytest.fixture(scope="module")
def si2():
    return read_run(need(EXAMPLE))


def test_overlap_by_quadrature_matches_the_codes_overlap(si2):
    s = si2.matrices["S"]
    sq = overlap_by_quadrature(si2, s, spacing=0.2)
    assert np.abs(sq - s.data).max() < 3e-3  # ABACUS's S comes from its two-centre tables: an independent check
    assert np.abs(sq - s.data).mean() < 1e-3 * np.abs(s.data).mean() * 10


def test_on_site_integral_of_a_narrow_gaussian_is_the_radial_integral(si2):
    """⟨s|g|s⟩ of the atom's own Gaussian (σ 0.3 Å: its images 3.8 Å away add < 1e-30) equals
    ∫ R(r)² exp(−r²/2σ²) r² dr, since ∫ |Y_00|² dΩ = 1: checks units (Å^-3/2 tables) and grid weights."""
    s = si2.matrices["S"]
    v = potential_integrals(si2, (0.3,), s, spacing=0.15)
    e = int(np.nonzero(s.onsite_blocks() & (s.edge_i == 0))[0][0])
    sh = si2.bases[si2.kinds[0]].shells[0]  # the first s shell (canonical order: l, then zeta)
    r, f = sh.r, sh.f
    want = np.trapezoid(f**2 * np.exp(-(r**2) / (2 * 0.3**2)) * r**2, r)
    got = v[s.offsets[e], 0, 0]  # entry (0, 0) of atom 0's on-site block, centre atom 0
    assert got == pytest.approx(want, rel=5e-3)


def _as_blocks(s, v, k, m):
    return s.with_data(np.ascontiguousarray(v[:, k, m]))


def test_integrals_rotate_with_the_basis_exactly(si2):
    s = si2.matrices["S"]
    v = potential_integrals(si2, SIGMAS, s, spacing=0.3)
    rng = np.random.default_rng(3)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    for qq in (q, -q):  # a rotation and a rotation with inversion
        rot = copy.copy(si2)
        rot.positions = si2.positions @ qq.T
        rot.lattice = si2.lattice @ qq.T
        rot.matrices = {"S": rotate_matrix(s, si2.kinds, si2.bases, qq)}
        vr = potential_integrals(rot, SIGMAS, rot.matrices["S"], spacing=0.3)
        for k in range(si2.n_atoms):
            for m in range(len(SIGMAS)):
                want = rotate_matrix(_as_blocks(s, v, k, m), si2.kinds, si2.bases, qq)
                assert _as_blocks(rot.matrices["S"], vr, k, m).max_abs_diff(want) < 1e-10


def test_integrals_ignore_translations_lattice_wraps_and_atom_order(si2):
    from nextham_dft.core.blocks import BlockSparse

    s = si2.matrices["S"]
    v = potential_integrals(si2, SIGMAS, s, spacing=0.3)
    moved = copy.copy(si2)
    moved.positions = si2.positions + np.array([0.37, -1.21, 0.55])
    assert np.abs(potential_integrals(moved, SIGMAS, s, spacing=0.3) - v).max() < 1e-10
    # atom 1 moved by a lattice vector: the same crystal, its blocks' R relabelled
    moved.positions = si2.positions.copy()
    moved.positions[1] += si2.lattice[0]
    shift = np.array([1, 0, 0])
    R = s.R - shift * (s.edge_j == 1)[:, None] + shift * (s.edge_i == 1)[:, None]
    s_moved = BlockSparse(s.norb, s.edge_i, s.edge_j, R, s.offsets, s.data, s.spin)
    assert np.abs(potential_integrals(moved, SIGMAS, s_moved, spacing=0.3) - v).max() < 1e-10
    order = np.array([1, 0])
    perm = copy.copy(si2)
    perm.positions = si2.positions[order]
    perm.kinds = si2.kinds[order]
    sp = s.permute_atoms(order)
    vp = potential_integrals(perm, SIGMAS, sp, spacing=0.3)
    for k in range(2):
        for m in range(len(SIGMAS)):
            want = _as_blocks(s, v, order[k], m).permute_atoms(order).aligned_to(sp)
            assert _as_blocks(sp, vp, k, m).max_abs_diff(want) < 1e-10


def test_training_cache_of_the_integrals_returns_what_it_stored(tiny_dataset):
    from nextham_dft.dataset import iter_dataset
    from nextham_dft.model.cache import cached_potential_integrals, potential_cache_path

    system = next(iter_dataset(tiny_dataset))
    path = potential_cache_path(tiny_dataset, SIGMAS, 0.3)
    assert path.parent == tiny_dataset.parent and path != potential_cache_path(tiny_dataset, SIGMAS[:1], 0.3)
    first = cached_potential_integrals(path, system, SIGMAS, 0.3)
    assert path.exists()
    want = potential_integrals(system, SIGMAS, system.matrices["H0"], spacing=0.3)
    assert np.abs(first - want).max() < 1e-6 * np.abs(want).max()
    assert np.array_equal(cached_potential_integrals(path, system, SIGMAS, 0.3), first)  # read back


def test_the_matrix_of_one_field_equals_the_contracted_integrals(si2):
    """potential_matrix integrates ΔV = Σ c_km g_m(k) at once: the same as Σ c_km V^(k,m)."""
    from nextham_dft.core.potential import potential_matrix

    s = si2.matrices["S"]
    c = np.array([[0.5, -0.3], [0.2, 0.9]])
    v = potential_integrals(si2, SIGMAS, s, spacing=0.3)
    got = potential_matrix(si2, SIGMAS, c, s, spacing=0.3)
    assert np.abs(got - np.einsum("ekm,km->e", v, c)).max() < 1e-12


def test_integrals_do_not_depend_on_how_the_grid_is_blocked(si2, monkeypatch):
    """The points are processed in blocks, each with the orbitals and Gaussian images that reach it;
    a Gaussian is summed to 7σ, so another blocking gives the same integrals (to its 3e-11 tails)."""
    from nextham_dft.core import potential

    s = si2.matrices["S"]
    v = potential_integrals(si2, SIGMAS, s, spacing=0.3)
    orig = potential._grid_integrals
    monkeypatch.setattr(potential, "_grid_integrals", lambda *a, **k: orig(*a, **{**k, "block": 4}))
    assert np.abs(potential_integrals(si2, SIGMAS, s, spacing=0.3) - v).max() < 1e-9


@pytest.mark.parametrize("strain", [False, True])
def test_gaussian_field_from_its_fourier_series_is_the_direct_periodic_sum(si2, strain):
    """On an atom-anchored grid, the Fourier-series field equals Σ_T g(|r − τ − T|) summed directly in
    real space (to round-off), per atom and combined with coefficients; also in an oblique, strained cell."""
    from nextham_dft.core.density import periodic_images
    from nextham_dft.core.potential import _GaussianField, _grid_shape

    system = copy.deepcopy(si2)
    if strain:
        system.lattice = np.asarray(system.lattice) @ np.array([[1.05, 0.1, 0.0], [0.0, 0.93, 0.07], [0.02, 0.0, 1.1]])
    sig = np.array([0.3, 0.7, 2.0])
    field = _GaussianField(system, sig)
    lat = np.asarray(system.lattice, dtype=float)
    shape = _grid_shape(lat, 0.25)
    origin = system.positions[1]
    got = field.per_atom(shape, origin).reshape(shape + (system.n_atoms, len(sig)))
    rng = np.random.default_rng(3)
    n = np.stack([rng.integers(0, m, 40) for m in shape], 1)
    pts = origin + (n / np.array(shape)) @ lat
    owner, _T, pos = periodic_images(lat, system.positions, 9.0 * sig.max(), margin=2)
    g = np.exp(-((pts[:, None] - pos[None]) ** 2).sum(-1)[:, :, None] / (2.0 * sig**2))
    want = np.stack([g[:, owner == a].sum(1) for a in range(system.n_atoms)], 1)
    assert np.abs(got[n[:, 0], n[:, 1], n[:, 2]] - want).max() < 1e-12 * want.max()
    c = rng.normal(size=(system.n_atoms, len(sig)))
    both = field.combined(c, shape, origin)[..., 0]
    assert np.abs(both - np.einsum("xyzkm,km->xyz", got, c)).max() < 1e-12 * np.abs(both).max()
