"""The block-sparse container: hermiticity by construction, COO round trips, k-space assembly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextham_dft.core.blocks import BlockSparse
from nextham_dft.core.kspace import KAssembler, Smearing, fermi_level, solve_generalized
from nextham_dft.errors import OverlapNotPositiveDefiniteError


def random_hermitian_real_space(rng, norb, spinor=False):
    """Dense M(R) for R in {-1, 0, 1}³ with M(-R) = M(R)^†."""
    n = int(sum(norb)) * (2 if spinor else 1)
    mats = {}
    for R in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, -1, 1)]:
        a = rng.normal(size=(n, n)) + (1j * rng.normal(size=(n, n)) if spinor else 0)
        if R == (0, 0, 0):
            a = a + np.conj(a.T)
        mats[R] = a
        mats[tuple(-x for x in R)] = np.conj(a.T)
    return mats


def to_coo(mats, spinor):
    rows, cols, R, v = [], [], [], []
    for k, m in mats.items():
        if spinor:
            n = m.shape[0] // 2
            blk = m.reshape(n, 2, n, 2).transpose(0, 2, 1, 3)
            r, c = np.nonzero(np.ones((n, n)))
            rows += list(r)
            cols += list(c)
            R += [k] * len(r)
            v += list(blk[r, c])
        else:
            r, c = np.nonzero(np.ones_like(m, dtype=bool))
            rows += list(r)
            cols += list(c)
            R += [k] * len(r)
            v += list(m[r, c])
    return np.array(rows), np.array(cols), np.array(R), np.array(v)


@pytest.mark.parametrize("spinor", [False, True])
def test_coo_round_trip_and_hermiticity(spinor):
    rng = np.random.default_rng(3)
    norb = [3, 5, 1]
    mats = random_hermitian_real_space(rng, norb, spinor)
    m = BlockSparse.from_coo(norb, *to_coo(mats, spinor), spin="spinor" if spinor else "none")
    assert m.hermiticity_error < 1e-12
    k = rng.random((4, 3))
    hk = KAssembler(m, spinor=spinor)(k)
    ref = sum(np.exp(2j * np.pi * (k @ np.array(R)))[:, None, None] * M for R, M in mats.items())
    assert np.allclose(hk, ref)
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)))


@pytest.mark.parametrize("spinor", [False, True])
def test_entry_r_index_equals_unique_rows_of_the_entries(spinor):
    """The block-level R index of every coo entry is np.unique(R, axis=0) of the per-entry R."""
    from nextham_dft.core.blocks import unique_rows

    rng = np.random.default_rng(5)
    m = BlockSparse.from_coo([3, 5, 1], *to_coo(random_hermitian_real_space(rng, [3, 5, 1], spinor), spinor),
                             spin="spinor" if spinor else "none")
    for full in (False, True):
        rows, cols, R, vals = m.to_coo(full=full)
        uR, idx = m.entry_R_index(full=full)
        u_ref, i_ref = unique_rows(R)
        assert np.array_equal(uR, u_ref) and np.array_equal(idx, i_ref)
        r2, c2, none, v2 = m.to_coo(full=full, with_R=False)
        assert none is None and np.array_equal(r2, rows) and np.array_equal(c2, cols) and np.array_equal(v2, vals)
    rows, cols, R, vals = m.to_spinor_coo()
    uR, idx = m.entry_R_index(full=True, repeat=m.spinor_repeat)
    assert np.array_equal(uR[idx], R) and m.to_spinor_coo(with_R=False)[2] is None


def test_half_storage_rejects_nothing_and_mirrors_exactly():
    rng = np.random.default_rng(5)
    mats = random_hermitian_real_space(rng, [2, 2])
    m = BlockSparse.from_coo([2, 2], *to_coo(mats, False))
    b = m.block(1, 0, (-1, 0, 0))
    assert np.allclose(b, mats[(-1, 0, 0)][2:, :2])
    ei, ej, R, off, data = m.full_blocks()
    back = BlockSparse.from_full_blocks(m.norb, ei, ej, R, off, data, m.spin)
    assert back.max_abs_diff(m) == 0.0


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(4))))
def test_permuting_atoms_keeps_the_spectrum(perm):
    rng = np.random.default_rng(11)
    norb = [2, 3, 1, 2]
    mats = random_hermitian_real_space(rng, norb)
    m = BlockSparse.from_coo(norb, *to_coo(mats, False))
    s = BlockSparse.from_coo(norb, *to_coo({(0, 0, 0): np.eye(8)}, False))
    k = np.array([[0.1, 0.2, 0.3]])
    e = solve_generalized(KAssembler(m)(k), KAssembler(s)(k))
    mp = m.permute_atoms(np.array(perm))
    sp_ = s.permute_atoms(np.array(perm))
    ep = solve_generalized(KAssembler(mp)(k), KAssembler(sp_)(k))
    assert np.allclose(e, ep)


def test_non_positive_overlap_is_reported():
    s = np.array([[[1.0, 1.0], [1.0, 1.0 - 1e-3]]], dtype=complex)
    with pytest.raises(OverlapNotPositiveDefiniteError, match="linearly dependent"):
        solve_generalized(np.eye(2)[None].astype(complex), s)


@pytest.mark.parametrize("method", ["gaussian", "fd", "mp", "mv", "fixed"])
def test_fermi_level_counts_electrons(method):
    rng = np.random.default_rng(0)
    eigs = np.sort(rng.normal(size=(10, 8)) * 3, axis=1)
    w = np.full(10, 0.1)
    sm = Smearing(method, 0.1)
    mu = fermi_level(eigs, w, 7.0, sm, 2.0)
    if method != "fixed":
        from nextham_dft.core.kspace import electron_count

        assert abs(electron_count(eigs, w, mu, sm, 2.0) - 7.0) < 1e-6
    assert eigs.min() < mu < eigs.max()


def test_shift_invert_bands_near_energy_equal_dense_ones():
    """The sparse shift-invert path returns exactly the dense eigenvalues closest to the energy (SOC cell)."""
    import numpy as np

    from nextham_dft.core.kspace import bands_near
    from nextham_dft.registry import read_run

    from .conftest import DATA, need

    s = read_run(need(DATA / "supercell" / "alp_prim_soc"))
    k = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    ef = s.fermi_ev["H"]
    full = s.bands("H", k)
    near = bands_near(s.matrices["H"], s.matrices["S"], k, ef, 8)
    for a in range(len(k)):
        ref = np.sort(full[a][np.argsort(np.abs(full[a] - ef))[:8]])
        assert np.allclose(near[a], ref, atol=1e-9)


def _random_pair(rng, spinor):
    """A random Hermitian M (spinor or spinless) and a real overlap S, positive definite at every k."""
    norb = [3, 5, 1]
    m = BlockSparse.from_coo(norb, *to_coo(random_hermitian_real_space(rng, norb, spinor), spinor),
                             spin="spinor" if spinor else "none")
    small = {R: 0.03 * a.real for R, a in random_hermitian_real_space(rng, norb).items()}
    small[(0, 0, 0)] = small[(0, 0, 0)] + np.eye(9)
    return m, BlockSparse.from_coo(norb, *to_coo(small, False))


@pytest.mark.parametrize("spinor", [False, True])
def test_dense_by_R_assembly_and_fixed_overlap_factors_match_the_direct_ones(spinor):
    """M(k) from the dense M(R) product equals the entry-wise sum; S's factors formed once give the eigenpairs
    of solve_generalized (C^† S C = 1)."""
    from nextham_dft.core.kspace import FixedOverlap

    rng = np.random.default_rng(3)
    m, s = _random_pair(rng, spinor)
    k = rng.random((7, 3))
    dense, direct = KAssembler(m, spinor=spinor), KAssembler(m, spinor=spinor, dense_bytes=0)
    assert dense.by_R is not None and direct.by_R is None
    assert np.abs(dense(k) - direct(k)).max() < 1e-12
    fixed = FixedOverlap(s, k, spinor=spinor, chunk=3)
    e, c = fixed.eigensystem(m)
    sk = KAssembler(s, spinor=spinor)(k)
    e_ref = solve_generalized(KAssembler(m, spinor=spinor)(k), sk)
    assert np.abs(e - e_ref).max() < 1e-10
    eye = np.conj(np.swapaxes(c, -1, -2)) @ sk @ c
    assert np.abs(eye - np.eye(eye.shape[-1])).max() < 1e-10
    hk = KAssembler(m, spinor=spinor)(k)
    assert np.abs(hk @ c - (sk @ c) * e[:, None, :]).max() < 1e-9
