"""The canonical real-harmonic convention, proven on ABACUS's own rotated runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from e3nn import o3

from nextham_dft.adapters.abacus import read_run
from nextham_dft.adapters.abacus.convention import ABACUS_CONVENTION
from nextham_dft.core.sph import PAULI, code_to_canonical, e3nn_harmonics, spin_half_rotation, tesseral_harmonics
from nextham_dft.testing import rotate_matrix

from .conftest import DATA, need


@pytest.mark.parametrize("l", range(5))
def test_e3nn_harmonics_match_e3nn(l):
    x = np.random.default_rng(l).normal(size=(20, 3))
    ref = o3.spherical_harmonics(l, torch.tensor(x), normalize=True, normalization="integral").numpy()
    assert np.allclose(e3nn_harmonics(l, x), ref, atol=1e-12)


@pytest.mark.parametrize("l", [0, 1, 2, 3])
def test_polynomial_tesseral_harmonics_equal_scipys(l):
    """The Cartesian polynomials (l ≤ 3, the orbitals' hot path) and scipy's complex harmonics agree."""
    from nextham_dft.core.sph import _tesseral_polynomial, _tesseral_scipy

    pts = np.random.default_rng(l).normal(size=(500, 3)) * 3.0
    assert np.allclose(_tesseral_polynomial(l, pts), _tesseral_scipy(l, pts), atol=1e-13)


@pytest.mark.parametrize("l", range(5))
def test_code_tables_are_orthogonal_and_abacus_p_is_z_minus_x_minus_y(l):
    m = code_to_canonical(ABACUS_CONVENTION, l)
    assert np.allclose(m @ m.T, np.eye(2 * l + 1), atol=1e-12)
    if l == 1:
        x = np.random.default_rng(1).normal(size=(10, 3))
        t = tesseral_harmonics(1, x)  # (y, z, x) · c
        abacus = np.stack([t[:, 1], -t[:, 2], -t[:, 0]], 1)  # (z, -x, -y)
        assert np.allclose(abacus @ m.T, e3nn_harmonics(1, x), atol=1e-12)


def test_spin_half_rotation_rotates_pauli_vector():
    q = o3.rand_matrix(dtype=torch.float64).numpy()
    u = spin_half_rotation(q)
    assert np.allclose(u @ u.conj().T, np.eye(2))
    lhs = np.einsum("ij,ajk,lk->ail", u, PAULI, u.conj())
    rhs = np.einsum("ba,bij->aij", q, PAULI)
    assert np.allclose(lhs, rhs, atol=1e-12)




@pytest.mark.abacus
@pytest.mark.parametrize("name", ["si_ns1", "gaas_ns1", "gasb_soc"])
def test_rotated_abacus_runs_transform_with_wigner_d(name):
    """Every block of the rotated run equals D(Q) B D(Q)^T (and U B U^† in spin) to grid noise."""
    base = need(DATA / "rotation")
    a, b = read_run(base / f"{name}_a"), read_run(base / f"{name}_b")
    q = np.array(json.loads((base / f"{name}_b" / "meta.json").read_text())["rotation_matrix"])
    assert np.allclose(a.positions @ q.T, b.positions, atol=1e-8)
    for tag, tol in (("S", 1e-7), ("H0", 5e-5), ("H", 5e-5)):
        ma, mb = a.matrices[tag], b.matrices[tag]
        rot = rotate_matrix(ma, a.kinds, a.bases, q)
        err = rot.max_abs_diff(mb)
        assert err < tol, f"{name} {tag}: rotated blocks differ by {err:.2e} eV"
        # and the test can fail: without the rotation the blocks differ a lot
        assert ma.max_abs_diff(mb) > 1e3 * tol
