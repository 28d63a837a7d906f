"""Self-consistent completion: Hartree and PBE potentials, UPF densities, and the SCF against ABACUS's own."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from nextham_dft.core.hxc import hartree_potential, xc_energy, xc_potential
from nextham_dft.core.units import COULOMB_EV_ANG
from nextham_dft.errors import MissingDataError, ParseError

from .conftest import DATA, EXAMPLE, need


def _cubic_grid(length: float, n: int):
    lat = np.eye(3) * length
    f = np.arange(n) / n
    pts = np.stack(np.meshgrid(f, f, f, indexing="ij"), -1) @ lat
    return lat, pts


def test_hartree_potential_of_a_neutral_gaussian_pair_is_coulombs():
    """+1 e of width 0.5 Å and −1 e of width 0.9 Å at one centre: V(r) = k[erf(r/√2σ1) − erf(r/√2σ2)]/r,
    zero outside both (no dipole), so the periodic images add only a constant."""
    lat, pts = _cubic_grid(14.0, 70)
    c = np.array([7.0, 7.0, 7.0])
    r = np.linalg.norm(pts - c, axis=-1)
    s1, s2 = 0.5, 0.9

    def g(s):
        return np.exp(-r**2 / (2 * s * s)) / (2 * np.pi * s * s) ** 1.5

    v = hartree_potential(g(s1) - g(s2), lat)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = COULOMB_EV_ANG * (erf(r / (np.sqrt(2) * s1)) - erf(r / (np.sqrt(2) * s2))) / r
    ref[r < 1e-9] = COULOMB_EV_ANG * np.sqrt(2 / np.pi) * (1 / s1 - 1 / s2)
    sel = r < 4.0
    diff = (v - ref)[sel]
    assert np.ptp(diff) < 2e-3 * np.abs(ref[sel]).max()  # equal up to one constant
    assert abs(hartree_potential(g(s1), lat).mean()) < 1e-9  # G = 0 left out


def _smooth_density(lat, pts):
    """A periodic, positive, atom-like density (e/Å³) with a partial-core-like sharp part."""
    b = 2 * np.pi * np.linalg.inv(lat).T
    ph = pts @ b.T
    return 0.05 + 0.03 * np.cos(ph[..., 0]) * np.cos(ph[..., 1]) + 0.02 * np.sin(2 * ph[..., 2]) ** 2


def test_xc_potential_is_the_functional_derivative_of_the_energy():
    lat, pts = _cubic_grid(4.0, 24)
    n = _smooth_density(lat, pts)
    delta = 0.004 * np.cos(2 * np.pi * pts[..., 0] / 4.0 + 0.3) * np.exp(np.sin(2 * np.pi * pts[..., 1] / 4.0))
    eps = 1e-3
    de = (xc_energy(n + eps * delta, lat) - xc_energy(n - eps * delta, lat)) / (2 * eps)
    dv = abs(np.linalg.det(lat)) / n.size
    dfun = float((xc_potential(n, lat) * delta).sum() * dv)
    assert de == pytest.approx(dfun, rel=1e-6)


def _pbe_torch(n, sigma):
    """PBE energy per volume (Ha/bohr³) written independently in torch, for automatic derivatives."""
    import torch

    kf = (3 * np.pi**2 * n) ** (1 / 3)
    fx = 1.804 - 0.804 / (1 + 0.2195149727645171 * sigma / (2 * kf * n) ** 2 / 0.804)
    rs = (3 / (4 * np.pi * n)) ** (1 / 3)
    a, a1, b1, b2, b3, b4 = 0.031091, 0.21370, 7.5957, 3.5876, 1.6382, 0.49294
    ec = -2 * a * (1 + a1 * rs) * torch.log(1 + 1 / (2 * a * (b1 * rs**0.5 + b2 * rs + b3 * rs**1.5 + b4 * rs**2)))
    beta, gamma = 0.06672455060314922, (1 - np.log(2)) / np.pi**2
    t2 = sigma / (2 * torch.sqrt(4 * kf / np.pi) * n) ** 2
    aa = beta / gamma / (torch.exp(-ec / gamma) - 1)
    h = gamma * torch.log(1 + beta / gamma * t2 * (1 + aa * t2) / (1 + aa * t2 + aa**2 * t2**2))
    return n * (-0.75 * (3 * n / np.pi) ** (1 / 3) * fx + ec + h)


def test_pbe_energy_and_its_analytic_derivatives_match_automatic_differentiation():
    import torch

    from nextham_dft.core.hxc import pbe_xc

    rng = np.random.default_rng(0)
    n = 10 ** rng.uniform(-5, 1, 200)
    sigma = n ** (8 / 3) * 10 ** rng.uniform(-3, 2, 200)  # s² from 1e-3 to 1e2
    nt = torch.tensor(n, requires_grad=True)
    st = torch.tensor(sigma, requires_grad=True)
    e_ref = _pbe_torch(nt, st)
    dn_ref, ds_ref = torch.autograd.grad(e_ref.sum(), (nt, st))
    e, dn, ds = pbe_xc(n, sigma)
    assert np.allclose(e, e_ref.detach().numpy(), rtol=1e-12, atol=0)
    assert np.allclose(dn, dn_ref.numpy(), rtol=1e-9, atol=0)
    assert np.allclose(ds, ds_ref.numpy(), rtol=1e-9, atol=0)


def test_the_uniform_gas_has_slater_exchange_and_pw92_correlation():
    """No gradient: PBE is the LDA; at rs = 2 bohr the correlation energy per electron is −0.0448 Ha (PW92,
    Ceperley–Alder), and the potential of a uniform density is uniform."""
    from nextham_dft.core.hxc import lda_xc, pbe_xc
    from nextham_dft.core.units import BOHR_TO_ANG

    n = np.array([3 / (4 * np.pi * 2.0**3)])
    ex = -0.75 * (3 * n / np.pi) ** (1 / 3)
    assert (lda_xc(n)[0] / n - ex)[0] == pytest.approx(-0.0448, abs=3e-4)
    assert pbe_xc(n, np.zeros(1))[0][0] == pytest.approx(lda_xc(n)[0][0], rel=1e-12)
    v = xc_potential(np.full((8, 8, 8), n[0] / BOHR_TO_ANG**3), np.eye(3) * 3.0)
    assert np.ptp(v) < 1e-9


def test_xc_refuses_a_functional_it_does_not_implement():
    with pytest.raises(ValueError, match="not supported"):
        xc_potential(np.ones((4, 4, 4)), np.eye(3), "HSE06")


def test_upf_densities_hold_the_valence_charge_and_the_core():
    from adapters.abacus.inputs import read_upf_density

    d = read_upf_density(need(EXAMPLE) / "Si.upf")
    assert (d.element, d.functional, d.z_valence) == ("Si", "PBE", 4.0)
    assert d.charge() == pytest.approx(4.0, abs=2e-3)
    assert d.core.max() > 0  # PseudoDojo: non-linear core correction
    assert 4.0 < d.reach < 10.0


def test_truncated_upf_is_a_parse_error(tmp_path):
    from adapters.abacus.inputs import read_upf_density

    text = (need(EXAMPLE) / "Si.upf").read_text()
    bad = tmp_path / "Si.upf"
    bad.write_text(text[: text.index("<PP_RHOATOM") + 400])
    with pytest.raises(ParseError, match="PP_RHOATOM"):
        read_upf_density(bad)


@pytest.fixture(scope="module")
def si2():
    from adapters.abacus import AbacusAdapter

    return AbacusAdapter().read_run(need(EXAMPLE))


def _shifted_mae(a, b, s):
    d = a - b
    mu = d @ s / (s @ s)
    return float(np.abs(d - mu * s).mean() * 1e3)


def test_the_scf_from_h0_reaches_abacus_converged_hamiltonian(si2):
    from nextham_dft.core.scf import complete_scf
    from nextham_dft.evaluation import evaluate

    res = complete_scf(si2)
    assert res.converged and res.iterations < 20
    s = si2.matrices["S"]
    h, h0, ref = (m.aligned_to(s).data for m in (res.hamiltonian, si2.matrices["H0"], si2.matrices["H"]))
    err, err0 = _shifted_mae(h, ref, s.data), _shifted_mae(h0, ref, s.data)
    assert err < 0.1 * err0 and err < 0.2  # meV per entry, after the rigid shift
    ev = evaluate(si2, res.hamiltonian)
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.1 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["band_mae_shifted_mev"] < 3.0
    assert ev["predicted"]["ghost_states"] == 0


def test_mixing_the_last_output_in_takes_no_more_diagonalisations_and_moves_h_closer(si2):
    """ScfSettings.mix_last: at a loose tolerance the same iterations (diagonalisations) run, and the returned H,
    which mixes in the last diagonalisation's output, is closer to ABACUS's converged H than the last input's."""
    from dataclasses import replace

    from nextham_dft.core.scf import ScfSettings, complete_scf

    loose = ScfSettings(tol=3e-2)
    assert loose.mix_last  # the default
    plain, mixed = complete_scf(si2, settings=replace(loose, mix_last=False)), complete_scf(si2, settings=loose)
    assert plain.converged and mixed.converged and plain.iterations == mixed.iterations
    s = si2.matrices["S"]
    ref = si2.matrices["H"].aligned_to(s).data
    err = {k: _shifted_mae(r.hamiltonian.aligned_to(s).data, ref, s.data) for k, r in (("plain", plain), ("mixed", mixed))}
    assert err["mixed"] < 0.8 * err["plain"]


def test_the_scf_started_from_the_converged_hamiltonian_stops_at_once(si2):
    from nextham_dft.core.scf import ScfSettings, complete_scf

    res = complete_scf(si2, start=si2.matrices["H"], settings=ScfSettings(tol=1e-4))
    assert res.converged and res.iterations <= 3


def test_the_scf_moves_with_the_crystal(si2):
    """The grid is anchored at an atom, so a translated crystal converges to the same H up to the grid's
    quadrature (which atom anchors it may change), far below the SCF's own change of H."""
    import copy

    from nextham_dft.core.scf import complete_scf

    moved = copy.copy(si2)
    moved.positions = si2.positions + np.array([0.37, -1.1, 0.52])
    a, b = complete_scf(si2), complete_scf(moved)
    s = si2.matrices["S"]
    ha, hb = a.hamiltonian.aligned_to(s).data, b.hamiltonian.aligned_to(s).data
    change = np.abs(ha - si2.matrices["H0"].aligned_to(s).data).mean()
    assert np.abs(ha - hb).mean() < 0.02 * change


def test_the_scf_rotates_with_the_crystal(si2):
    """A rotated (and inverted) crystal converges to the rotated H: its fractional coordinates, so its
    anchor atom, do not change, and the grid rotates with it (exact to round-off and the SCF's tolerance)."""
    from scipy.spatial.transform import Rotation

    from nextham_dft.core.scf import complete_scf

    from .conftest import assert_rotates_with_crystal

    q = -Rotation.random(random_state=3).as_matrix()  # a rotation times inversion
    assert_rotates_with_crystal(lambda system: complete_scf(system).hamiltonian, si2, q, 1e-8)


def test_the_scf_needs_the_pseudopotential_densities(si2):
    import copy

    from nextham_dft.core.scf import complete_scf

    bare = copy.copy(si2)
    bare.atomic_densities = []
    bare.meta = {**si2.meta, "atomic_densities_missing": "Si: pseudopotential file Si.upf not found"}
    with pytest.raises(MissingDataError, match="Si.upf not found"):
        complete_scf(bare)


def test_the_scf_keeps_the_spin_orbit_part_and_reaches_abacus_soc_run():
    """AlP with spin–orbit coupling (nspin 4): the SOC part is H(0)'s to round-off, the rest converges."""
    from adapters.abacus import AbacusAdapter
    from nextham_dft.core.blocks import spinor_to_ab
    from nextham_dft.core.scf import complete_scf
    from nextham_dft.evaluation import evaluate

    run = need(DATA / "reference-density" / "alp_soc")
    system = AbacusAdapter().read_run(run)
    res = complete_scf(system)
    assert res.converged
    h0 = system.matrices["H0"]
    a, b = spinor_to_ab(res.hamiltonian.aligned_to(h0).data)
    a0, b0 = spinor_to_ab(h0.data)
    assert np.abs(b - b0).max() < 1e-12  # every block of H(0), those beyond S's reach too
    keys = {(i, j, tuple(r)) for i, j, r in zip(res.hamiltonian.edge_i, res.hamiltonian.edge_j, res.hamiltonian.R)}
    assert all((i, j, tuple(r)) in keys for i, j, r in zip(h0.edge_i, h0.edge_j, h0.R))  # no block of H(0) dropped
    ev = evaluate(system, res.hamiltonian)
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.1 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["soc_mae_uev"] < 1.0


def test_the_training_file_keeps_the_atomic_densities(tiny_dataset, si2):
    from nextham_dft.dataset import iter_dataset

    system = next(iter(iter_dataset(tiny_dataset)))
    (d,), (ref,) = system.atomic_densities, si2.atomic_densities
    assert (d.element, d.functional, d.z_valence, d.sha256) == (ref.element, ref.functional, ref.z_valence, ref.sha256)
    assert np.array_equal(d.r, ref.r) and np.array_equal(d.valence, ref.valence) and np.array_equal(d.core, ref.core)


def test_the_scf_refuses_a_functional_or_spin_mode_it_does_not_implement(si2):
    import copy
    from dataclasses import replace

    from nextham_dft.core.scf import complete_scf
    from nextham_dft.errors import UnsupportedError

    lda = copy.copy(si2)
    lda.atomic_densities = [replace(d, functional="SLA PZ") for d in si2.atomic_densities]
    with pytest.raises(UnsupportedError, match="SLA PZ"):
        complete_scf(lda)
    polarised = copy.copy(si2)
    polarised.spin_mode = "collinear"
    with pytest.raises(UnsupportedError, match="nspin 2"):
        complete_scf(polarised)


def test_half_the_mesh_by_time_reversal_gives_the_same_density(si2):
    from nextham_dft.core.density import density_matrix, density_on_grid
    from nextham_dft.core.scf import time_reversal_half

    mesh = si2.full_kmesh()
    k, w = time_reversal_half(mesh.frac, mesh.weights)
    assert len(k) == (len(mesh.frac) + 1) // 2 and w.sum() == pytest.approx(1.0)  # 5×5×5: Γ and 62 pairs
    h, s = si2.matrices["H"], si2.matrices["S"]
    full, ef_full = density_matrix(h, s, mesh.frac, mesh.weights, si2.nelec, si2.smearing)
    half, ef_half = density_matrix(h, s, k, w, si2.nelec, si2.smearing)
    assert ef_half == pytest.approx(ef_full, abs=1e-10)
    assert np.abs(full.data - half.data).max() < 1e-10
    shape = (10, 10, 10)
    assert np.allclose(density_on_grid(si2, full, shape), density_on_grid(si2, half, shape), atol=1e-10)


@pytest.fixture(scope="module")
def alp_soc():
    from adapters.abacus import AbacusAdapter

    return AbacusAdapter().read_run(need(DATA / "reference-density" / "alp_soc"))


def test_the_charge_only_density_matrix_gives_the_spinor_density_matrix_charge(alp_soc):
    """A spinor DM's charge part Σ_s DM_ss (and its density) equals the spinless DM formed for the charge alone."""
    from nextham_dft.core.density import density_matrix, density_on_grid

    mesh = alp_soc.full_kmesh()  # the full mesh: time reversal then cancels the magnetisation
    k, w = mesh.frac, mesh.weights
    h, s = alp_soc.matrices["H0"], alp_soc.matrices["S"]
    full, ef = density_matrix(h, s, k, w, alp_soc.nelec, alp_soc.smearing)
    charge, ef_c = density_matrix(h, s, k, w, alp_soc.nelec, alp_soc.smearing, charge_only=True)
    assert charge.spin == "none" and ef_c == ef
    assert np.abs(charge.data - (full.data[:, 0, 0] + full.data[:, 1, 1]).real).max() < 1e-12
    shape = (8, 8, 8)
    rho4 = density_on_grid(alp_soc, full, shape)
    assert np.abs(density_on_grid(alp_soc, charge, shape) - rho4[0]).max() < 1e-10
    assert np.abs(rho4[1:]).max() < 1e-6 * rho4[0].max()  # non-magnetic: no magnetisation (to round-off)


def test_kept_grid_values_and_entry_positions_change_no_density_or_integral(alp_soc, si2):
    """The SCF's kept orbital values and pair positions (reused every iteration) give what a fresh grid gives,
    for a spinor DM's four components too; the potential's matrix is symmetric in each on-site block."""
    from nextham_dft.core.density import GridOrbitals, density_matrix, density_on_grid
    from nextham_dft.core.potential import _grid_integrals

    for system in (si2, alp_soc):
        mesh = system.full_kmesh()
        s = system.matrices["S"]
        dm, _ = density_matrix(system.matrices["H0"], s, mesh.frac, mesh.weights, system.nelec, system.smearing)
        shape, origin = (9, 9, 9), np.array([0.1, 0.2, 0.3])
        kept = GridOrbitals(system, shape, origin, keep_bytes=1 << 28)
        assert kept.nbytes > 0
        fresh = density_on_grid(system, dm, shape, origin=origin)
        for _ in range(2):  # the second call reuses the kept positions
            assert np.abs(density_on_grid(system, dm, shape, origin=origin, orbitals=kept) - fresh).max() < 1e-12
        spacing = float(np.max(np.linalg.norm(system.lattice, axis=1) / np.array(shape))) + 1e-9

        def field(shape_, origin_):
            x = np.arange(shape_[0])[:, None, None, None] / shape_[0]
            return np.broadcast_to(1.0 + 0.5 * np.cos(2 * np.pi * x), tuple(shape_) + (1,))

        a = _grid_integrals(system, s, spacing, field, grid_origin=origin)
        b = _grid_integrals(system, s, spacing, field, grid_origin=origin, orbitals=kept)
        assert np.abs(a - b).max() < 1e-12


def test_valence_and_core_superposed_in_one_pass_equal_each_alone(alp_soc):
    from nextham_dft.core.atomic import superposition_on_grid

    shape, origin = (7, 7, 7), np.array([0.3, -0.2, 0.1])
    both = superposition_on_grid(alp_soc, shape, origin, ("valence", "core"))
    assert both.shape == (2,) + shape and both[0].max() > 0
    for n, part in enumerate(("valence", "core")):
        assert np.array_equal(both[n], superposition_on_grid(alp_soc, shape, origin, part))
    with pytest.raises(ValueError, match="unknown density part"):
        superposition_on_grid(alp_soc, shape, origin, ("valence", "semicore"))


def test_the_hamiltonian_of_a_density_is_hermitian_and_keeps_the_spin_orbit_part(alp_soc):
    """H[ρ] through the kept grid positions: every on-site block is hermitian (ΔV's matrix is symmetric), the
    second evaluation (positions reused) equals the first, and a spinor H changes only in its charge part."""
    from nextham_dft.core.blocks import spinor_to_ab
    from nextham_dft.core.scf import SelfConsistency

    sc = SelfConsistency(alp_soc, 0.2)
    rho, _ = sc.density(sc.h0)
    h = sc.hamiltonian(rho)
    assert np.array_equal(sc.hamiltonian(rho).data, h.data)
    on = np.nonzero(h.onsite_blocks())[0]
    for e in on:
        n = int(h.norb[h.edge_i[e]])
        blk = h.data[h.offsets[e]:h.offsets[e + 1]].reshape(n, n, 2, 2).transpose(0, 2, 1, 3).reshape(2 * n, 2 * n)
        assert np.abs(blk - blk.conj().T).max() < 1e-10
    a, b = spinor_to_ab(h.aligned_to(sc.h0).data)
    a0, b0 = spinor_to_ab(sc.h0.data)
    assert np.abs(b - b0).max() < 1e-12 and np.abs(a - a0).max() > 1e-3

