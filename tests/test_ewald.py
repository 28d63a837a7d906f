"""Periodic electrostatics (core.ewald): Madelung constants, independence of the splitting, and the
symmetries the long-range model term relies on."""

from __future__ import annotations

import numpy as np
import pytest

from nextham_dft.core.ewald import ewald_matrix, neutral_potential_operator
from nextham_dft.core.units import COULOMB_EV_ANG


def _fcc(a: float) -> np.ndarray:
    return 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])


@pytest.mark.parametrize("kind, madelung", [("NaCl", 1.747564594633), ("CsCl", 1.762674773070)])
def test_madelung_constants(kind, madelung):
    """The Coulomb energy of ±1 point charges per ion pair is −M e²/(4πε₀ d), d the nearest-neighbour
    distance, with the textbook Madelung constants M."""
    a = 5.64
    if kind == "NaCl":
        lat, pos, d = _fcc(a), np.array([[0, 0, 0], [0.5 * a, 0, 0]]), 0.5 * a
    else:
        lat, pos, d = a * np.eye(3), np.array([[0, 0, 0], [0.5 * a] * 3]), 0.5 * a * np.sqrt(3)
    q = np.array([1.0, -1.0])
    energy = 0.5 * q @ ewald_matrix(lat, pos) @ q
    assert -energy * d / COULOMB_EV_ANG == pytest.approx(madelung, abs=1e-9)


def test_random_cell_matches_pymatgen_and_is_symmetric():
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(0)
    lat = rng.normal(size=(3, 3)) * 2.5 + np.eye(3) * 6.0  # triclinic
    pos = rng.random((6, 3)) @ lat
    q = rng.normal(size=6)
    q -= q.mean()
    a = ewald_matrix(lat, pos)
    assert np.allclose(a, a.T, atol=1e-14)
    st = Structure(Lattice(lat), ["Na"] * 6, pos, coords_are_cartesian=True, site_properties={"charge": q})
    assert 0.5 * q @ a @ q == pytest.approx(EwaldSummation(st).total_energy, rel=1e-8)


def test_potential_is_invariant_and_a_supercell_repeats_it():
    """Rotations, inversion, translations, a different choice of lattice vectors and the wrapping of
    positions leave φ unchanged; a supercell gives each atom the φ of its primitive-cell atom; the
    neutral operator ignores a uniform charge."""
    rng = np.random.default_rng(1)
    lat = np.array([[3.1, 0.2, 0.0], [-1.4, 2.9, 0.3], [0.1, 0.4, 7.5]])
    pos = rng.random((4, 3)) @ lat
    q = rng.normal(size=4)
    phi = neutral_potential_operator(lat, pos) @ q
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert np.allclose(neutral_potential_operator(-lat @ rot.T, -pos @ rot.T + 1.7) @ q, phi, atol=1e-10)
    other = np.array([[1, 1, 0], [0, 1, 0], [2, 0, 1]]) @ lat  # same lattice, other basis
    assert np.allclose(neutral_potential_operator(other, pos + lat[2] - 2 * lat[0]) @ q, phi, atol=1e-10)
    super_lat = np.diag([2, 1, 3]) @ lat
    shifts = [i * lat[0] + k * lat[2] for i in range(2) for k in range(3)]
    super_pos = np.concatenate([pos + t for t in shifts])
    phi_s = neutral_potential_operator(super_lat, super_pos) @ np.tile(q, len(shifts))
    assert np.allclose(phi_s, np.tile(phi, len(shifts)), atol=1e-10)
    assert np.allclose(neutral_potential_operator(lat, pos) @ (q + 0.3), phi, atol=1e-12)
    assert np.abs(phi).max() > 0.1  # eV: a real potential, so the comparisons can fail


def test_degenerate_cell_is_an_error():
    with pytest.raises(ValueError, match="degenerate"):
        ewald_matrix(np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]), np.zeros((1, 3)))


def test_row_chunks_change_nothing(monkeypatch):
    import nextham_dft.core.ewald as ewald

    rng = np.random.default_rng(2)
    lat = np.diag([4.0, 5.0, 6.0])
    pos = rng.random((7, 3)) @ lat
    whole = ewald_matrix(lat, pos)
    monkeypatch.setattr(ewald, "ROW_CHUNK", 3)
    assert np.array_equal(ewald_matrix(lat, pos), whole)
