"""dataset.h5 → canonical systems (eigenvalues equal ABACUS's), training format, supercells."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from nextham_dft.adapters.abacus import read_run
from nextham_dft.adapters.abacus.dojo_h5 import iter_structures, read_structure, structure_ids
from nextham_dft.core.supercell import make_supercell
from nextham_dft.dataset import iter_dataset, list_ids, write_system

from .conftest import DATA, EXAMPLE, need
from .test_abacus_runs import window_error

pytestmark = pytest.mark.abacus
# a CI sample: nspin 1 and SOC, 2s2p1d / 2s2p2d1f / 4s2p1d / 4s2p2d1f bases, a 2D layer
SAMPLE = ["s0000", "s0029", "s0101", "s0129", "t0030", "t0070", "t0091"]


@pytest.mark.parametrize("sid", SAMPLE)
def test_dataset_eigenvalues_match_abacus(sid):
    system = read_structure(need(DATA / "dataset.h5"), sid)
    for tag in ("H0", "H"):
        assert window_error(system, tag) < 1e-4


def test_dataset_and_run_directory_agree():
    """The same structure read from dataset.h5 and from its raw run directory."""
    a = read_structure(need(DATA / "dataset.h5"), "t0045")
    b = read_run(DATA / "runs" / "t0045")
    assert np.allclose(a.positions, b.positions, atol=1e-6)
    for tag in ("S", "H0", "H"):
        # dataset.h5 stores float32 H with entries < 1e-7 Ry dropped
        assert a.matrices[tag].max_abs_diff(b.matrices[tag]) < 2e-5


def test_training_format_round_trip(tmp_path):
    system = read_run(need(DATA / "runs" / "s0089"))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        write_system(f.create_group("x"), system)
    back = next(iter_dataset(tmp_path / "d.h5"))
    assert back.spin_mode == "noncollinear" and back.soc and back.nelec == system.nelec
    for tag in ("S", "H0", "H"):
        assert back.matrices[tag].max_abs_diff(system.matrices[tag]) == 0.0
    assert [b.label() for b in back.bases] == ["2s2p2d1f"]


def test_training_format_keeps_the_radial_tables(tmp_path):
    """Grid integrals of the basis (core.potential) need the orbitals' radial tables after a round trip."""
    from nextham_dft.core.potential import overlap_by_quadrature

    system = read_run(need(EXAMPLE))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        write_system(f.create_group("x"), system)
    back = next(iter_dataset(tmp_path / "d.h5"))
    for a, b in zip(system.bases, back.bases):
        for sa, sb in zip(a.shells, b.shells):
            assert len(sa.r) > 0 and np.array_equal(sa.r, sb.r) and np.array_equal(sa.f, sb.f)
    s = back.matrices["S"]
    assert np.abs(overlap_by_quadrature(back, s, spacing=0.25) - s.data).max() < 1e-2


def test_an_empty_id_list_reads_no_structure(tiny_dataset):
    """ids=[] (an empty split) reads nothing; ids=None reads every structure."""
    assert list(iter_dataset(tiny_dataset, ids=[])) == []
    every = [s.meta["id"] for s in iter_dataset(tiny_dataset, matrices=())]
    assert every == sorted(list_ids(tiny_dataset)) and len(every) == 3
    one = every[1]
    assert [s.meta["id"] for s in iter_dataset(tiny_dataset, ids=[one], matrices=())] == [one]


def test_an_empty_id_list_reads_no_structure_of_the_shared_dataset():
    path = need(DATA / "dataset.h5")
    assert list(iter_structures(path, ids=[])) == []
    assert [s.meta["id"] for s in iter_structures(path, ids=["s0221"])] == ["s0221"]


def supercell_of(p, s):
    """(P, order): the integer matrix with s.lattice = P p.lattice, and the atom order that takes
    make_supercell(p, P)'s atoms to s's (asserted to match one to one, to 1e-6 in fractions)."""
    P = np.round(s.lattice @ np.linalg.inv(p.lattice)).astype(int)
    sc = make_supercell(p, P)
    assert np.allclose(sc.lattice, s.lattice, atol=1e-6)
    d = sc.frac_positions[:, None, :] - s.frac_positions[None, :, :]
    d -= np.round(d)
    dist = np.linalg.norm(d, axis=2)
    perm = np.argmin(dist, axis=1)
    assert dist.min(axis=1).max() < 1e-6 and len(set(perm)) == len(perm)
    return P, np.argsort(perm)


@pytest.mark.parametrize("prim, sup", [("si_prim_ns1", "si_222_ns1"), ("alp_prim_soc", "alp_211_soc")])
def test_supercell_from_primitive_reproduces_abacus(prim, sup):
    base = need(DATA / "supercell")
    p, s = read_run(base / prim), read_run(base / sup)
    P, order = supercell_of(p, s)
    sc = make_supercell(p, P)
    for tag in ("S", "H0", "H"):
        m = sc.matrices[tag].permute_atoms(order)
        assert m.max_abs_diff(s.matrices[tag]) < 1e-6, tag
    k = s.reference_eigenvalues["H"][0]
    for tag in ("H0", "H"):
        assert np.abs(sc.bands(tag, k) - s.bands(tag, k)).max() < 1e-4
        assert window_error(s, tag) < 1e-4


def test_every_structure_id_is_listed():
    ids = structure_ids(need(DATA / "dataset.h5"))
    assert len(ids) == 145
