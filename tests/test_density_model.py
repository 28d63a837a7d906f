"""The density network: Gaussian density fits, exact E(3) equivariance, model files, training, prediction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nextham_dft.core.gaussians import GaussianBasis, density_of, fit_density, neutralised
from nextham_dft.model.density_net import DensityConfig, DensityNet, atom_graph, density_sites

from .conftest import DATA, EXAMPLE, need

SMALL = DensityConfig(lmax=3, hidden_irreps="8x0e+4x1o+4x2e+2x0o+2x1e+2x2o+2x3o+2x3e", layers=2, r_max=4.0)


class _Cell:
    """The little a System the Gaussian functions need: a lattice, positions, an atom count."""

    def __init__(self, lattice, positions):
        self.lattice = np.asarray(lattice, dtype=float)
        self.positions = np.asarray(positions, dtype=float)
        self.n_atoms = len(self.positions)


def _grid(cell: _Cell, step: float = 0.12):
    shape = tuple(int(np.ceil(np.linalg.norm(a) / step)) for a in cell.lattice)
    return shape, np.zeros(3), abs(np.linalg.det(cell.lattice)) / np.prod(shape)


def test_gaussian_charges_are_the_integrals_and_a_fit_recovers_its_coefficients():
    cell = _Cell(np.diag([9.0, 9.5, 10.0]), [[3.0, 4.0, 5.0], [5.1, 4.6, 4.4]])
    shape, origin, dv = _grid(cell)
    basis = GaussianBasis()
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(2, basis.per_atom)) * 0.1
    rho = density_of(cell, shape, origin, coef, basis)
    assert rho.sum() * dv == pytest.approx((coef @ basis.charges()).sum(), rel=1e-3)  # 4.5σ reach, 0.12 Å grid
    exact = GaussianBasis(ridge=1e-10)
    assert np.abs(fit_density(cell, shape, origin, dv, rho, exact) - coef).max() < 1e-5
    ridge = fit_density(cell, shape, origin, dv, rho, basis)  # the ridge shrinks, the density stays
    assert np.abs(density_of(cell, shape, origin, ridge, basis) - rho).sum() < 0.02 * np.abs(rho).sum()


def test_neutralising_removes_the_net_charge_and_keeps_a_neutral_set():
    basis = GaussianBasis()
    c = np.random.default_rng(1).normal(size=(3, basis.per_atom))
    n = neutralised(c, basis)
    assert abs((n @ basis.charges()).sum()) < 1e-12
    assert np.array_equal(n[:, 3:], c[:, 3:])  # only the l = 0 coefficients move
    assert np.allclose(neutralised(n, basis), n, atol=1e-14)


def test_the_atom_graph_holds_every_pair_within_the_cutoff_once():
    lat = np.array([[3.0, 0.2, 0.0], [0.0, 3.3, 0.1], [0.4, 0.0, 2.9]])
    pos = np.array([[0.1, 0.2, 0.3], [1.6, 1.5, 1.4]])
    src, dst, vec = atom_graph(lat, pos, 4.0)
    brute = set()
    for i in range(2):
        for j in range(2):
            for t in np.ndindex(7, 7, 7):
                d = pos[j] + (np.array(t) - 3) @ lat - pos[i]
                if 1e-8 < np.linalg.norm(d) < 4.0:
                    brute.add((j, i, *np.round(d, 6)))
    ours = {(s, d, *np.round(v, 6)) for s, d, v in zip(src, dst, vec)}
    assert ours == brute and len(ours) == len(src)


def _random_input(n_atoms: int, seed: int, inputs: int = 1):
    rng = np.random.default_rng(seed)
    lat = np.eye(3) * 4.2 + rng.normal(scale=0.2, size=(3, 3))
    pos = rng.uniform(size=(n_atoms, 3)) @ lat
    z = torch.tensor(rng.choice([8, 14, 22, 38], size=n_atoms))
    c1 = torch.tensor(rng.normal(size=(n_atoms, inputs * SMALL.basis.per_atom)))
    return lat, pos, z, c1


def _run(net, lat, pos, z, c1):
    src, dst, vec = atom_graph(lat, pos, net.cfg.r_max)
    return net(z, c1, torch.tensor(src), torch.tensor(dst), torch.tensor(vec, dtype=c1.dtype))


def _with_bonds(lat, pos, z, c1, seed):
    """The sites of ``DensityConfig.bond_sites``: the atoms, then their bond midpoints (label BOND), with
    random input coefficients for the midpoints (fixed by ``seed``)."""
    from nextham_dft.core.gaussians import bond_midpoints
    from nextham_dft.model.density_net import BOND

    mids = bond_midpoints(lat, pos)
    extra = torch.tensor(np.random.default_rng(seed + 100).normal(size=(len(mids), c1.shape[1])))
    return np.vstack([pos, mids]), torch.cat([z, torch.full((len(mids),), BOND)]), torch.cat([c1, extra])


@pytest.mark.parametrize("seed,screening,bonds,linear,probe", [(0, False, False, False, 0), (1, False, False, False, 0),
                                                               (2, True, False, False, 0), (3, True, True, False, 0),
                                                               (4, False, True, True, 0), (5, True, False, False, 0.3),
                                                               (6, False, True, True, 0.3)])
def test_the_density_network_is_equivariant_under_rotations_inversion_and_permutations(seed, screening, bonds, linear,
                                                                                       probe):
    """Rotating (and inverting) the crystal and its input coefficients rotates the output with the irreps'
    Wigner-D (a density's parity: l odd changes sign); permuting atoms permutes rows; translating is nothing.
    With bond sites, the midpoints are recomputed from the moved crystal (their order follows fractional
    coordinates, which a rotation and a permutation of the atoms keep)."""
    from e3nn import o3

    from nextham_dft.testing import irreps_d

    torch.manual_seed(seed)
    net = DensityNet(dataclasses.replace(SMALL, screening=screening, bond_sites=bonds, linear_response=linear,
                                         probe=probe)).double()
    if screening or linear:  # the screening (and neighbour response) terms start at zero: give them weights to test
        torch.nn.init.normal_(net.screen[-1].weight, std=0.3)
    if linear:
        torch.nn.init.normal_(net.response.radial[-1].weight, std=0.3)
    lat, pos, z, c1 = _random_input(5, seed, net.cfg.inputs)

    def sites(lat_, pos_, z_, c1_):
        if not bonds:
            return pos_, z_, c1_
        return _with_bonds(lat_, pos_, z_, c1_, seed)

    s_pos, s_z, s_c1 = sites(lat, pos, z, c1)
    base = _run(net, lat, s_pos, s_z, s_c1).detach().numpy()
    assert np.abs(base).max() > 1e-3
    q = -Rotation.random(random_state=seed).as_matrix()
    d_in, d = irreps_d(net.irreps_in, q), irreps_d(net.irreps, q)  # the probe's coefficients rotate as Δρ1's
    r_pos, r_z, _ = sites(lat @ q.T, pos @ q.T, z, c1)
    assert np.abs(r_pos - s_pos @ q.T).max() < 1e-9  # the midpoints rotate with the crystal
    rot = _run(net, lat @ q.T, r_pos, r_z, s_c1 @ torch.tensor(d_in).T).detach().numpy()
    # 2e-8: the float64 limit of e3nn's tensor-product constants (the issue asks ≤ 1e-5)
    assert np.abs(rot - base @ d.T).max() < 2e-8 * np.abs(base).max()
    perm = np.random.default_rng(seed).permutation(5)
    p_pos, p_z, _ = sites(lat, pos[perm], z[perm], c1[perm])
    order = np.concatenate([perm, np.arange(5, len(s_pos))])
    assert np.abs(p_pos - s_pos[order]).max() < 1e-12
    perm_out = _run(net, lat, p_pos, p_z, s_c1[order]).detach().numpy()
    assert np.abs(perm_out - base[order]).max() < 1e-12
    moved = _run(net, lat, s_pos + np.array([0.3, -1.1, 2.0]), s_z, s_c1).detach().numpy()
    assert np.abs(moved - base).max() < 1e-12


def test_the_linear_response_network_is_linear_in_the_first_step_and_sees_its_neighbours():
    """linear_response: Δρ* = K(geometry, elements) Δρ1 exactly: a·Δρ1 + b·Δρ1' gives a·Δρ* + b·Δρ*', zero gives
    zero; and an atom's output depends on its neighbours' inputs (the neighbour term), not only its own."""
    torch.manual_seed(5)
    net = DensityNet(dataclasses.replace(SMALL, linear_response=True)).double()
    torch.nn.init.normal_(net.screen[-1].weight, std=0.3)
    torch.nn.init.normal_(net.response.radial[-1].weight, std=0.3)
    lat, pos, z, c1 = _random_input(5, 5)
    c2 = torch.randn_like(c1)
    out = lambda c: _run(net, lat, pos, z, c).detach().numpy()  # noqa: E731
    both = out(0.7 * c1 - 2.5 * c2)
    assert np.abs(both).max() > 1e-3
    assert np.abs(both - (0.7 * out(c1) - 2.5 * out(c2))).max() < 1e-10 * np.abs(both).max()
    assert np.abs(out(torch.zeros_like(c1))).max() == 0.0
    alone = torch.zeros_like(c1)
    alone[1] = c1[1]  # only atom 1 has a first-step change
    others = out(alone)[[0, 2, 3, 4]]
    assert np.abs(others).max() > 1e-6


def test_bond_midpoints_of_diamond_and_fcc_and_their_symmetry():
    """Diamond: 4 bonds per 2-atom cell, each midpoint half a bond from two atoms; fcc: 6 per atom. The
    midpoints' fractional coordinates do not change under a rotation with inversion or a permutation of
    the atoms, and shift with a translation."""
    from nextham_dft.core.gaussians import bond_midpoints

    a = 5.43
    fcc = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    pos = np.array([[0.0, 0.0, 0.0], [a / 4, a / 4, a / 4]])
    mids = bond_midpoints(fcc, pos)
    assert len(mids) == 4
    for m in mids:  # half the bond length, 2.351 / 2 Å, from exactly two atoms (images included)
        d = np.array([np.linalg.norm(m - p - (np.array(t) - 1) @ fcc) for p in pos for t in np.ndindex(3, 3, 3)])
        assert np.sum(np.abs(d - a * np.sqrt(3) / 8) < 1e-9) == 2
    assert len(bond_midpoints(fcc * 3.6 / a, np.zeros((1, 3)))) == 6

    def frac(lat, p):
        return {tuple(np.round(x, 6)) for x in np.linalg.solve(lat.T, bond_midpoints(lat, p).T).T % 1.0 + 0.0}

    rng = np.random.default_rng(4)
    lat = np.eye(3) * 4.0 + rng.normal(scale=0.3, size=(3, 3))
    p = rng.uniform(size=(4, 3)) @ lat
    ref = frac(lat, p)
    q = -Rotation.random(random_state=4).as_matrix()
    assert frac(lat @ q.T, p @ q.T) == ref
    assert frac(lat, p[[2, 0, 3, 1]]) == ref
    shift = np.array([0.25, 0.5, 0.125])  # exact in binary: the rounding sees the same numbers
    assert frac(lat, p + shift @ lat) == {tuple(np.round((np.array(x) + shift) % 1.0, 6) + 0.0) for x in ref}


def test_a_density_model_file_round_trips_and_its_checksum_is_checked(tmp_path):
    from nextham_dft.model.density_net import is_density_model
    from nextham_dft.model.store import ModelFileError, load_model, save_model

    torch.manual_seed(0)
    net = DensityNet(SMALL)
    save_model(tmp_path / "m.pt", net, {"name": "test-density", "elements": ["Si"]})
    back, card = load_model(tmp_path / "m.pt")
    assert is_density_model(back) and card["kind"] == "density" and back.known_elements == {"Si"}
    lat, pos, z, c1 = _random_input(3, 2)
    assert torch.equal(_run(net, lat, pos, z, c1.float()), _run(back, lat, pos, z, c1.float()))
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    raw[-20] ^= 1
    (tmp_path / "m.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "m.pt")


@pytest.fixture(scope="module")
def si2():
    from adapters.abacus import AbacusAdapter

    return AbacusAdapter().read_run(need(EXAMPLE))


@pytest.fixture(scope="module")
def si2_sample(si2):
    from nextham_dft.model.density_train import make_sample

    return make_sample(si2, SMALL, "si2")


def test_the_converged_density_fit_gives_the_dft_bands_and_the_first_step_overshoots(si2, si2_sample):
    """The fit of the converged density, put through H[ρ], is close to ABACUS's converged H; the first
    step's density (the network's input) is a different, larger change."""
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.evaluation import evaluate

    sc = SelfConsistency(si2, SMALL.spacing)
    c = neutralised(si2_sample.cstar.double().numpy(), SMALL.basis)
    ev = evaluate(si2, sc.hamiltonian(sc.rho_atoms + density_of(si2, sc.shape, sc.origin, c, SMALL.basis)))
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.5 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["h_mae_shifted_mev"] < 0.5 * ev["h0"]["h_mae_shifted_mev"]
    m = si2_sample.metric.double()
    size = lambda x: float(x.reshape(-1).double() @ m @ x.reshape(-1).double())  # noqa: E731
    assert size(si2_sample.c1) > 1.1 * size(si2_sample.cstar)
    assert np.all(np.linalg.eigvalsh(m.numpy()) > 0)  # a metric: positive definite


def test_the_secant_factor_inverts_a_uniform_screening_and_never_amplifies():
    """If the probe's response is u = −βγΔρ1 (J one screening constant −γ), the secant density Δρ1 + b·u is the
    fixed point Δρ1/(1 + γ), by every method; a response that would amplify (γ < 0) is clamped to b = 1/β.
    "anderson" minimises the linear model's residual (1 − βb)Δρ1 + b·u over b in (0, 1/β]."""
    from types import SimpleNamespace

    from nextham_dft.core.hxc import hartree_potential
    from nextham_dft.model.density_train import secant_factor

    rng = np.random.default_rng(0)
    sc = SimpleNamespace(lattice=np.diag([4.0, 5.0, 6.0]), dv=0.01)
    d1 = rng.normal(size=(12, 15, 18))
    d1 -= d1.mean()
    for method in ("projection", "anderson", "radau"):
        for beta, gamma in [(0.3, 2.5), (0.5, 0.4)]:
            b = secant_factor(sc, d1, -beta * gamma * d1, beta, 20.0, method)
            assert np.allclose(d1 + b * (-beta * gamma * d1), d1 / (1 + gamma), rtol=1e-12, atol=1e-12)
        assert secant_factor(sc, d1, 0.4 * d1, 0.3, 20.0, method) == pytest.approx(1 / 0.3)
    # a large response that is not a multiple of Δρ1: the projection follows its Δρ1 part, Anderson takes the
    # step that minimises the linear model's residual, so its secant residual is no larger
    other = rng.normal(size=d1.shape)
    other -= other.mean()
    u = -0.3 * 0.5 * d1 + 3.0 * other
    kernel = lambda x: hartree_potential(x, sc.lattice) + 20.0 * x  # noqa: E731
    residual = lambda b: (lambda r: float((r * kernel(r)).sum()))((1 - 0.3 * b) * d1 + b * u)  # noqa: E731
    b_p, b_a = (secant_factor(sc, d1, u, 0.3, 20.0, m) for m in ("projection", "anderson"))
    assert residual(b_a) < residual(b_p) and 0 < b_a <= 1 / 0.3
    for b in np.linspace(0.01, 1 / 0.3, 21):
        assert residual(b_a) <= residual(b) + 1e-9


def test_the_radau_secant_is_the_fixed_point_of_a_two_node_screening():
    """A crystal that leaves part p0 of Δρ1 unscreened and screens the rest p1 by one constant (J p0 = 0, J p1 = λ1 p1,
    p0 ⟂ p1 in the metric, where J is self-adjoint): its fixed point is p0 + p1/(1 − λ1), which "radau" finds
    exactly from Δρ1 and u = βJΔρ1 alone, and which neither one-constant model does."""
    from types import SimpleNamespace

    from nextham_dft.core.hxc import hartree_potential
    from nextham_dft.model.density_train import secant_factor

    rng = np.random.default_rng(1)
    sc = SimpleNamespace(lattice=np.diag([4.0, 5.0, 6.0]), dv=0.01)
    kernel = lambda x: hartree_potential(x, sc.lattice) + 20.0 * x  # noqa: E731
    ip = lambda a, b: float((a * kernel(b)).sum())  # noqa: E731
    p0, p1 = (x - x.mean() for x in rng.normal(size=(2, 12, 15, 18)))
    p1 -= ip(p1, p0) / ip(p0, p0) * p0
    for beta, lam in [(0.3, -4.0), (0.5, -0.7)]:
        d1, u = p0 + p1, beta * lam * p1
        fixed = p0 + p1 / (1 - lam)
        err = {m: (lambda r: ip(r, r) / ip(fixed, fixed))(d1 + secant_factor(sc, d1, u, beta, 20.0, m) * u - fixed)
               for m in ("projection", "anderson", "radau")}
        assert err["radau"] < 1e-20
        assert err["projection"] > 1e-3 and err["anderson"] > 1e-3


def test_the_hxc_kernel_is_symmetric_and_radau_hxc_inverts_a_uniform_screening(si2):
    """``hxc_kernel_action`` (Hartree + xc kernel at ρ_atoms) is a symmetric operator on Si2's grid (⟨a, Kb⟩ = ⟨b, Ka⟩,
    to the central difference's accuracy) whose Hartree part is the Poisson solve; the "radau-hxc" secant factor
    gives the fixed point Δρ1/(1 + γ) for a uniform screening u = −βγΔρ1, and a response that would amplify is
    clamped to 1/β as by the others."""
    from nextham_dft.core.hxc import hartree_potential, hxc_kernel_action
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.model.density_train import secant_factor

    sc = SelfConsistency(si2, 0.15)
    d1 = sc.density(sc.h0)[0] - sc.rho_atoms
    rng = np.random.default_rng(5)
    other = np.real(np.fft.ifftn(np.fft.fftn(rng.normal(size=sc.shape)) * np.exp(-0.05 * np.add.outer(
        np.add.outer(np.fft.fftfreq(sc.shape[0]) ** 2, np.fft.fftfreq(sc.shape[1]) ** 2),
        np.fft.fftfreq(sc.shape[2]) ** 2) * 1e4)))  # a smooth random change
    other *= 0.01 / np.abs(other).max()
    kernel = lambda x: hxc_kernel_action(x, sc.rho_atoms, sc.rho_core, sc.lattice, sc.functional)  # noqa: E731
    ab, ba = float((d1 * kernel(other)).sum()), float((other * kernel(d1)).sum())
    assert ab == pytest.approx(ba, rel=1e-3)
    xc_part = kernel(d1) - hartree_potential(d1, sc.lattice)
    assert float((d1 * xc_part).sum()) < 0  # the xc kernel is attractive at valence densities
    for beta, gamma in [(0.3, 2.5), (0.5, 0.4)]:
        b = secant_factor(sc, d1, -beta * gamma * d1, beta, 20.0, "radau-hxc")
        assert b == pytest.approx(1 / (beta * (1 + gamma)), rel=1e-10)
    assert secant_factor(sc, d1, 0.4 * d1, 0.3, 20.0, "radau-hxc") == pytest.approx(1 / 0.3)


def test_a_probe_step_measures_the_screening_of_si2(si2):
    """On the shipped Si2 run, the secant density from Δρ1 and one probe step gives H with far better bands than
    H(0)'s, and its fit (the network's first input) is much closer to the converged density's fit than Δρ1's is,
    in the coefficient metric."""
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.evaluation import evaluate
    from nextham_dft.model.density_train import coefficient_metric, first_step, secant_factor

    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    sc = SelfConsistency(si2, cfg.spacing)
    d1 = sc.density(sc.h0)[0] - sc.rho_atoms
    u = sc.density(sc.hamiltonian(sc.rho_atoms + 0.3 * d1))[0] - sc.rho_atoms - d1
    b = secant_factor(sc, d1, u, 0.3, cfg.xc_weight)
    assert 0 < b <= 1 / 0.3
    ev = evaluate(si2, sc.hamiltonian(sc.rho_atoms + d1 + b * u))
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.2 * ev["h0"]["band_mae_shifted_mev"]
    sites = density_sites(si2, cfg)[0]
    inputs = first_step(sc, cfg, sites).inputs
    per = cfg.basis.per_atom
    assert inputs.shape == (2, 2 * per)
    assert np.allclose(inputs[:, per:], fit_density(sites, sc.shape, sc.origin, sc.dv, u, cfg.basis))
    rho_star, _ = sc.density(si2.matrices["H"])
    cstar = fit_density(sites, sc.shape, sc.origin, sc.dv, rho_star - sc.rho_atoms, cfg.basis).reshape(-1)
    c1 = first_step(sc, dataclasses.replace(cfg, probe=0.0), sites).inputs.reshape(-1)
    m = coefficient_metric(sc, cfg, sites)
    err = lambda c: float((c - cstar) @ m @ (c - cstar))  # noqa: E731
    assert err(inputs[:, :per].reshape(-1)) < 0.2 * err(c1)


def test_screened_probe_inputs_are_the_secant_part_beyond_uniform_screening(si2):
    """probe_inputs="screened": the first input is the secant density's fit (as with "response"), the second is
    Δρ_S − Δρ1/(1 + γ) = b·u⊥, whose density is orthogonal to Δρ1's fit in the metric γ was fitted in (the
    uniform-screening part is all in the first, Δρ1/(1 + γ)), so the secant density splits into the two
    orthogonally (Si2 screens: γ > 0)."""
    from nextham_dft.core.gaussians import densities_of
    from nextham_dft.core.hxc import hartree_potential
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.model.density_train import first_step

    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    screened = dataclasses.replace(cfg, probe_inputs="screened")
    sc = SelfConsistency(si2, cfg.spacing)
    sites = density_sites(si2, cfg)[0]
    per = cfg.basis.per_atom
    raw, new = first_step(sc, cfg, sites), first_step(sc, screened, sites)
    assert new.secant == pytest.approx(raw.secant) and 1 / (0.3 * new.secant) - 1 > 0.05  # γ > 0
    assert np.allclose(new.inputs[:, :per], raw.inputs[:, :per]) and np.allclose(new.unresolved, raw.unresolved)
    b = raw.secant
    f1 = raw.inputs[:, :per] - b * raw.inputs[:, per:]  # the fit of Δρ1
    g1, gs, gsec = densities_of(sites, sc.shape, sc.origin, [f1, new.inputs[:, per:], new.inputs[:, :per]], cfg.basis)
    dot = lambda a, c: float((a * (hartree_potential(c, sc.lattice) + cfg.xc_weight * c)).sum() * sc.dv)  # noqa: E731
    assert abs(dot(g1, gs)) < 1e-8 * dot(g1, g1)
    screened_part = (0.3 * b) ** 2 * dot(g1, g1)  # ‖Δρ1/(1 + γ)‖²
    assert dot(gsec, gsec) == pytest.approx(screened_part + dot(gs, gs), rel=1e-8)
    assert 0 < dot(gs, gs) < 0.2 * dot(gsec, gsec)
    with pytest.raises(ValueError, match="probe_inputs"):
        dataclasses.replace(cfg, probe_inputs="raw")


def test_the_training_losses_weigh_structures_as_documented(si2):
    """DensityTraining.loss: "energy" is the error energy per atom over the training norm, "norm" its square root,
    and "secant-log" log(error / the secant density's error): 0 for a probe network that returns its secant
    density (a fresh one whose output layer is zeroed), negative when closer to c*."""
    from nextham_dft.model.density_train import DensityTraining, error_energies, make_sample, structure_losses

    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    sample = make_sample(si2, cfg, "si2")
    charges = torch.tensor(cfg.basis.charges(), dtype=torch.float32)
    net = DensityNet(cfg)
    with torch.no_grad():
        net.out.weight.zero_()  # skip and screening start at zero: the output is the secant density
        energies = error_energies(net, [sample], charges)
        energy, norm_, log = (structure_losses(energies, [sample], charges, loss, 2.0)
                              for loss in ("energy", "norm", "secant-log"))
        assert float(energy) == pytest.approx(float(energies[0]) / len(sample.z) / 2.0, rel=1e-6)
        assert float(norm_) == pytest.approx(float(energy) ** 0.5, rel=1e-5)
        assert abs(float(log)) < 1e-4
        closer = [0.5 * energies[0]]
        assert float(structure_losses(closer, [sample], charges, "secant-log", 2.0)) == pytest.approx(np.log(0.5), abs=1e-4)
    with pytest.raises(ValueError, match="loss"):
        DensityTraining(loss="l1")


def test_training_fits_a_structure_and_keeps_the_best_validation_state(si2_sample):
    from nextham_dft.model.density_train import DensityTraining, relative_error, train_density

    logs = []
    net, info = train_density(SMALL, [si2_sample], [si2_sample], DensityTraining(epochs=60, batch=1, lr=1e-2, eval_every=5),
                              log=logs.append)
    charges = torch.tensor(SMALL.basis.charges(), dtype=torch.float32)
    assert info["best_val"] == pytest.approx(relative_error(net, [si2_sample], charges), rel=1e-5)
    assert info["best_val"] < 0.2  # from about 1 (the network starts near "no change")
    assert info["history"][0]["val"] > info["best_val"] and len(logs) == 12



def test_training_with_a_moving_average_returns_the_averaged_weights_that_were_validated(si2_sample):
    """ema_decay > 0: the validated and returned network is the weights' moving average; with the same seed it
    differs from the plain run's, and it still fits."""
    from nextham_dft.model.density_train import DensityTraining, relative_error, train_density

    charges = torch.tensor(SMALL.basis.charges(), dtype=torch.float32)
    plain, _ = train_density(SMALL, [si2_sample], [si2_sample], DensityTraining(epochs=40, batch=1, lr=1e-2), log=lambda m: None)
    ema, info = train_density(SMALL, [si2_sample], [si2_sample], DensityTraining(epochs=40, batch=1, lr=1e-2, ema_decay=0.9),
                              log=lambda m: None)
    assert info["best_val"] == pytest.approx(relative_error(ema, [si2_sample], charges), rel=1e-5)
    assert info["best_val"] < 0.5
    diff = max(float((a - b).abs().max()) for a, b in zip(ema.state_dict().values(), plain.state_dict().values()) if a.numel())
    assert diff > 1e-4


def test_a_density_model_predicts_through_the_cli_and_reports_its_stages(tmp_path, si2, si2_sample):
    """predict --model FILE with a density model: H from core.scf's H[ρ], hermitian, on H(0)'s blocks, with
    the stage timings and an eval against the converged run; unseen elements warn."""
    import json

    from click.testing import CliRunner

    from nextham_dft.cli import main
    from nextham_dft.model.density_train import DensityTraining, train_density
    from nextham_dft.model.store import save_model

    net, _ = train_density(SMALL, [si2_sample], [si2_sample], DensityTraining(epochs=30, batch=1, lr=1e-2))
    save_model(tmp_path / "d.pt", net, {"name": "test-density", "elements": ["Ge"]})
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "o"), "--model",
                                    str(tmp_path / "d.pt"), "--no-native"])
    assert res.exit_code == 0, res.output
    assert "element Si was not in the training data" in res.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert {"grid_setup_s", "first_step_and_network_s", "hamiltonian_s"} <= set(report["timings"])
    ev = report["eval"]
    assert ev["predicted"]["band_mae_shifted_mev"] < ev["h0"]["band_mae_shifted_mev"]
    # --scf continues from the predicted density itself, on the prediction's grid
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "s"), "--model",
                                    str(tmp_path / "d.pt"), "--no-native", "--scf"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["scf"]["start"] == "predicted density" and report["scf"]["converged"]
    assert report["eval"]["predicted"]["band_mae_shifted_mev"] < 1.0


def test_a_density_model_refuses_a_run_without_pseudopotentials(tmp_path, si2_sample):
    import shutil

    from click.testing import CliRunner

    from nextham_dft.cli import main
    from nextham_dft.model.store import save_model

    save_model(tmp_path / "d.pt", DensityNet(SMALL), {"name": "test-density"})
    run = tmp_path / "run"
    shutil.copytree(need(EXAMPLE), run)
    (run / "Si.upf").unlink()
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "d.pt")])
    assert res.exit_code != 0 and "Si.upf" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def _probe_net(cfg, seed: int) -> DensityNet:
    """A density network of ``cfg`` whose weights are moved off their initial values, so that its correction to
    the secant density is not zero."""
    torch.manual_seed(seed)
    net = DensityNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_a_crystal_beyond_the_training_inputs_gets_the_secant_density_and_a_warning(tmp_path, si2):
    """A probe model leaves its correction out where the inputs' ratio exceeds its training set's largest
    (``input_ratio_max``): there the density is the secant density's (fit, neutralised, plus the unresolved
    part) exactly, and `predict` says so in report.json and on stderr; within it, the network's correction
    is used. The grid ratio is the coefficient ratio the training script takes its maximum of."""
    import json
    import shutil

    from click.testing import CliRunner

    from nextham_dft.cli import main
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.model.density_predict import predict_density
    from nextham_dft.model.density_train import coefficient_input_ratio, first_step, make_sample
    from nextham_dft.model.store import save_model

    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    ratio = coefficient_input_ratio(make_sample(si2, cfg, "si2"))
    net = _probe_net(cfg, seed=0)
    sc = SelfConsistency(si2, cfg.spacing)
    sites = density_sites(si2, cfg)[0]
    step = first_step(sc, cfg, sites)
    assert step.ratio == pytest.approx(ratio, rel=1e-4)
    fit = neutralised(step.inputs[:, :cfg.basis.per_atom], cfg.basis)
    secant = sc.rho_atoms + step.unresolved + density_of(sites, sc.shape, sc.origin, fit, cfg.basis)
    for limit, used in [(0.0, True), (2 * ratio, True), (0.5 * ratio, False)]:
        net.cfg = dataclasses.replace(cfg, input_ratio_max=limit)
        pred = predict_density(net, si2)
        assert pred.probe["network_used"] is used and pred.probe["input_ratio"] == pytest.approx(ratio, rel=1e-4)
        assert np.allclose(pred.density, secant, atol=1e-12) is not used
    save_model(tmp_path / "d.pt", net, {"name": "narrow"})
    run = tmp_path / "run"
    shutil.copytree(need(EXAMPLE), run)
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "d.pt")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["probe"]["network_used"] is False and "extrapolate" in res.output
    assert any("secant density" in w for w in report["warnings"])


def test_a_shrunk_correction_moves_the_density_from_the_secant_by_that_share(si2):
    """``correction_scale`` λ keeps a share of the network's correction to the secant density: λ = 0 is the
    secant density itself, λ = 0.5 lies halfway (the density is linear in the coefficients), λ = 1 the network's;
    a share outside [0, 1] is refused."""
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.model.density_predict import network_coefficients
    from nextham_dft.model.density_train import first_step

    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    net = _probe_net(cfg, seed=1)
    sc = SelfConsistency(si2, cfg.spacing)
    sites = density_sites(si2, cfg)
    step = first_step(sc, cfg, sites[0])
    coeffs = {}
    for lam in (0.0, 0.5, 1.0):
        net.cfg = dataclasses.replace(cfg, correction_scale=lam)
        coeffs[lam] = network_coefficients(net, step, sites)
    assert np.allclose(coeffs[0.0], neutralised(step.inputs[:, :cfg.basis.per_atom], cfg.basis), atol=1e-12)
    assert np.abs(coeffs[1.0] - coeffs[0.0]).max() > 1e-4
    assert np.allclose(coeffs[0.5], 0.5 * (coeffs[0.0] + coeffs[1.0]), atol=1e-12)
    with pytest.raises(ValueError, match="correction_scale"):
        dataclasses.replace(cfg, correction_scale=1.5)
    with pytest.raises(ValueError, match="probe step"):
        dataclasses.replace(cfg, probe=0.0, correction_scale=0.5)


def test_the_members_correction_is_shrunk_by_how_far_they_agree():
    """``shrunk_correction``: members that agree keep their mean correction (w = 1); opposite corrections cancel
    to the secant (w = 0); otherwise w = ‖δ̄‖²/(‖δ̄‖² + σ²) with σ² = Σ‖δ_k − δ̄‖²/(K(K − 1)), in the given norm."""
    from nextham_dft.model.density_predict import shrunk_correction

    rng = np.random.default_rng(3)
    secant, d = rng.normal(size=(2, 4, 27))
    norm2 = lambda c: float((c * c).sum())  # noqa: E731
    c, w = shrunk_correction(secant, [secant + d, secant + d], norm2)
    assert w == 1.0 and np.allclose(c, secant + d, atol=1e-14)
    c, w = shrunk_correction(secant, [secant + d, secant - d], norm2)
    assert w < 1e-20 and np.allclose(c, secant, atol=1e-14)
    e = rng.normal(size=d.shape)
    c, w = shrunk_correction(secant, [secant + d, secant + e], norm2)
    mean = 0.5 * (d + e)
    var = (norm2(d - mean) + norm2(e - mean)) / 2
    assert w == pytest.approx(norm2(mean) / (norm2(mean) + var), rel=1e-12) and 0 < w < 1
    assert np.allclose(c, secant + w * mean, atol=1e-13)
    assert shrunk_correction(secant, [secant + d], norm2)[1] == 1.0  # one network: nothing to compare


def test_an_ensemble_with_member_shrink_predicts_between_the_secant_and_its_mean(si2):
    """With ``member_shrink`` an ensemble's coefficients lie on the segment from the secant density to the
    members' mean, at the weight it reports (in the training metric on the grid); without the grid it is refused;
    the option needs a probe step."""
    from nextham_dft.core.scf import SelfConsistency
    from nextham_dft.model.density_net import DensityEnsemble
    from nextham_dft.model.density_predict import network_coefficients
    from nextham_dft.model.density_train import first_step

    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    members = [_probe_net(cfg, seed=1), _probe_net(cfg, seed=2)]
    sc = SelfConsistency(si2, cfg.spacing)
    sites = density_sites(si2, cfg)
    step = first_step(sc, cfg, sites[0])
    plain = DensityEnsemble(members)
    mean = network_coefficients(plain, step, sites)
    shrunk = DensityEnsemble(members)
    shrunk.cfg = dataclasses.replace(cfg, member_shrink=True)
    info: dict = {}
    c = network_coefficients(shrunk, step, sites, sc=sc, info=info)
    secant = neutralised(step.inputs[:, :cfg.basis.per_atom], cfg.basis)
    w = info["member_weight"]
    assert 0.0 < w < 1.0 and np.abs(mean - secant).max() > 1e-4
    assert np.allclose(c, secant + w * (mean - secant), atol=1e-10)
    with pytest.raises(ValueError, match="pass sc"):
        network_coefficients(shrunk, step, sites)
    with pytest.raises(ValueError, match="probe step"):
        dataclasses.replace(cfg, probe=0.0, member_shrink=True)


def test_the_completion_starts_from_a_given_density(si2):
    """complete_scf(start_density=...): from the density of the converged H it is done at once; a density
    on another grid is refused; with the density's H handed in (start_hamiltonian), the steps are the same."""
    from nextham_dft.core.scf import ScfSettings, SelfConsistency, complete_scf

    sc = SelfConsistency(si2, 0.15)
    first = complete_scf(si2, consistency=sc)
    rho, _ = sc.density(first.hamiltonian)
    again = complete_scf(si2, start_density=rho, consistency=sc)
    assert again.converged and again.iterations <= 2 < first.iterations
    with pytest.raises(ValueError, match="grid"):
        complete_scf(si2, start_density=rho[:-1], consistency=sc)
    # the density's own H handed in (as a density model's prediction has it) gives the same steps
    cfg = ScfSettings(tol=0.0, max_iter=2)
    rho0 = 0.5 * (rho + sc.rho_atoms)
    given = complete_scf(si2, settings=cfg, start_density=rho0, consistency=sc, start_hamiltonian=sc.hamiltonian(rho0))
    built = complete_scf(si2, settings=cfg, start_density=rho0, consistency=sc)
    assert given.residuals == built.residuals and np.array_equal(given.hamiltonian.data, built.hamiltonian.data)


def test_prior_steps_start_the_pulay_history(si2):
    """complete_scf(prior=...) with ScfSettings.prior_history: a step already taken at the self-consistent
    density (its residual is zero) makes one Pulay step from the atoms' density land there; without
    prior_history the same call ignores it, and a prior step on another grid is refused."""
    from nextham_dft.core.scf import ScfSettings, SelfConsistency, complete_scf

    sc = SelfConsistency(si2, 0.15)
    done = complete_scf(si2, settings=ScfSettings(tol=1e-7), consistency=sc)
    rho_star, _ = sc.density(done.hamiltonian)
    pair = [(rho_star, sc.density(sc.hamiltonian(rho_star))[0])]
    step = lambda use, prior: complete_scf(si2, settings=ScfSettings(tol=0.0, max_iter=1, prior_history=use),  # noqa: E731
                                           start_density=sc.rho_atoms, consistency=sc, prior=prior).hamiltonian
    gap = lambda h: np.abs(h.data - done.hamiltonian.data).max()  # noqa: E731
    assert gap(step(True, pair)) < 1e-3 * gap(step(False, pair))
    assert np.array_equal(step(False, pair).data, step(False, []).data)
    with pytest.raises(ValueError, match="grid"):
        step(True, [(rho_star[:-1], rho_star[:-1])])


def test_cross_validation_folds_partition_the_split_and_score_each_structure_once(tmp_path, si2):
    """scripts/density_recipe/cross_validate.py: the folds' held-out parts partition train + val (never the test
    ids) and each fold trains on the rest; `eval` scores every NAME=MODEL on a fold's structures (H(0) beside),
    the domain guard applied (a model whose domain excludes Si2 scores its secant density, not the network's);
    `summary` prints a line per name; bad arguments are one-line errors, and existing results are not
    overwritten."""
    import json
    import subprocess
    import sys

    import h5py

    from nextham_dft.dataset import write_system
    from nextham_dft.model.store import save_model

    recipe = EXAMPLE.parents[1] / "scripts" / "density_recipe"
    sys.path.insert(0, str(recipe))
    try:
        from cross_validate import make_folds
    finally:
        sys.path.remove(str(recipe))
    split = {"train": [f"a{i}" for i in range(7)], "val": ["b0", "b1"], "test": ["c0"]}
    folds = make_folds(split, 3)
    held = [x for f in folds for x in f["val"]]
    assert sorted(held) == sorted(split["train"] + split["val"]) and len(set(held)) == len(held)
    assert all(set(f["train"]) | set(f["val"]) == set(held) and not set(f["train"]) & set(f["val"]) for f in folds)
    assert make_folds(split, 3) == folds

    def run(*args):
        return subprocess.run([sys.executable, str(recipe / "cross_validate.py"), *args], capture_output=True, text=True,
                              timeout=600)

    with h5py.File(tmp_path / "data.h5", "w") as f:
        write_system(f.create_group("si2"), si2)
    (tmp_path / "fold.json").write_text(json.dumps({"train": [], "val": ["si2"], "test": []}))
    cfg = dataclasses.replace(SMALL, lmax=2, probe=0.3)
    net = _probe_net(cfg, seed=0)
    save_model(tmp_path / "wide.pt", net, {"name": "wide"})
    net.cfg = dataclasses.replace(cfg, input_ratio_max=1e-6)  # Si2 lies beyond: the secant density
    save_model(tmp_path / "narrow.pt", net, {"name": "narrow"})
    done = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), f"wide={tmp_path / 'wide.pt'}",
               f"narrow={tmp_path / 'narrow.pt'}", "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "e.json").read_text())
    assert set(rows) == {"wide", "narrow"} and all(len(r) == 1 and r[0]["id"] == "si2" for r in rows.values())
    wide, narrow = (rows[k][0]["predicted"]["band_mae_shifted_mev"] for k in ("wide", "narrow"))
    assert wide != pytest.approx(narrow) and rows["wide"][0]["h0"] == rows["narrow"][0]["h0"]
    before = (tmp_path / "e.json").read_text()
    again = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), f"wide={tmp_path / 'wide.pt'}",
                "--json", str(tmp_path / "e.json"))  # an existing result is not overwritten
    assert again.returncode != 0 and "exists" in again.stderr and (tmp_path / "e.json").read_text() == before
    assert run("folds", str(tmp_path / "fold.json"), str(tmp_path / "cv")).returncode == 0
    twice = run("folds", str(tmp_path / "fold.json"), str(tmp_path / "cv"))
    assert twice.returncode != 0 and "new folder" in twice.stderr and len(twice.stderr.strip().splitlines()) == 1
    summary = run("summary", str(tmp_path / "e.json"))
    assert summary.returncode == 0 and summary.stdout.count("structures, shifted bands") == 2
    bad = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), str(tmp_path / "wide.pt"),
              "--json", str(tmp_path / "x.json"))
    assert bad.returncode != 0 and "NAME=MODEL" in bad.stderr and not (tmp_path / "x.json").exists()
    net.cfg = dataclasses.replace(cfg, secant="anderson")  # another first step: not evaluated beside the others
    save_model(tmp_path / "other.pt", net, {"name": "other"})
    mixed = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), f"wide={tmp_path / 'wide.pt'}",
                f"other={tmp_path / 'other.pt'}", "--json", str(tmp_path / "x.json"))
    assert mixed.returncode != 0 and "differ" in mixed.stderr and len(mixed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
    few = run("folds", str(tmp_path / "fold.json"), str(tmp_path / "cv1"), "--k", "1")
    assert few.returncode != 0 and "2 folds" in few.stderr and len(few.stderr.strip().splitlines()) == 1
    # completion steps after each prediction, one row set per mixing; the steps move H towards the converged one
    stepped = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), f"wide={tmp_path / 'wide.pt'}",
                  "--steps", "2", "--mix", "0.4:0.8", "--mix", "0.8:0", "--json", str(tmp_path / "s.json"))
    assert stepped.returncode == 0, stepped.stderr
    srows = json.loads((tmp_path / "s.json").read_text())
    assert set(srows) == {"wide", "wide+2steps@0.4:0.8", "wide+2steps@0.8:0"}
    assert srows["wide"][0]["predicted"] == rows["wide"][0]["predicted"]
    after = [srows[k][0]["predicted"]["h_mae_shifted_mev"] for k in ("wide+2steps@0.4:0.8", "wide+2steps@0.8:0")]
    assert after[0] != pytest.approx(after[1]) and max(after) < rows["wide"][0]["predicted"]["h_mae_shifted_mev"]
    negative = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), f"wide={tmp_path / 'wide.pt'}",
                   "--steps", "-1", "--json", str(tmp_path / "y.json"))
    assert negative.returncode != 0 and "--steps -1" in negative.stderr and len(negative.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y.json").exists()
    for bad_mix in ("0.4", "1.5:0.8", "0.4:-1"):
        refused = run("eval", str(tmp_path / "data.h5"), str(tmp_path / "fold.json"), f"wide={tmp_path / 'wide.pt'}",
                      "--steps", "2", "--mix", bad_mix, "--json", str(tmp_path / "y.json"))
        assert refused.returncode != 0 and "--mix" in refused.stderr and not (tmp_path / "y.json").exists()


def test_the_bundled_density_model_card_and_prediction(tmp_path):
    """`--model density`: its card (training inputs with checksums, the bundled split, under 2 h of
    training), and on the shipped example it beats H(0) by far (density5: 3.2 against 138 meV bands, H after μS 0.09
    against 3.0 meV). Si's bond charge is an l = 3 function of its atoms' site symmetry, beyond the l ≤ 2
    Gaussians (their fit of the converged density itself gives 99 meV bands here): the model's probe step
    keeps the secant density's part they cannot hold, and the network corrects the rest."""
    import json

    from click.testing import CliRunner

    from nextham_dft.cli import main
    from nextham_dft.model.store import bundled_model_path, load_model

    model, card = load_model(bundled_model_path("density"))
    default_card = load_model(bundled_model_path("bundled"))[1]
    assert card["kind"] == "density" and card["split"] == default_card["split"]
    assert card["training"]["total_wall_clock_s"] <= 2 * 3600 and "train.py" in card["training"]["command"]
    assert "Si" in card["elements"] and card["pseudopotential_files"]["Si"]["sha256"]
    root = EXAMPLE.parents[1]
    for name in ("make_samples.py", "train.py", "split.json"):  # the recipe the card names is the one shipped
        assert f"scripts/density_recipe/{name}" in card["training"]["command"]
        assert (root / "scripts" / "density_recipe" / name).is_file()
    assert json.loads((root / "scripts" / "density_recipe" / "split.json").read_text()) == card["split"]
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "o"), "--model", "density"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    ev = report["eval"]
    # what the probe step measured: a screening, b = 1/(β(1 + γ)) with γ ≥ 0; Si screens its first step by ~1/(1 + γ)
    probe = report["probe"]
    assert probe["probe"] == 0.3 and probe["screening_gamma"] >= 0
    assert probe["secant_factor"] == pytest.approx(1 / (0.3 * (1 + probe["screening_gamma"])))
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.1 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["h_mae_shifted_mev"] < 0.1 * ev["h0"]["h_mae_shifted_mev"]
    assert ev["predicted"]["ghost_states"] == 0
    assert (tmp_path / "o" / "abacus").is_dir()
    # two Kohn–Sham steps from the predicted density, no convergence test and no warning about one
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "k"), "--model", "density",
                                    "--no-native", "--scf-steps", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "k" / "report.json").read_text())
    assert report["scf"]["iterations"] == 2 and report["scf"]["steps_only"] and not report["warnings"]
    assert report["scf"]["start"] == "predicted density"
    assert report["eval"]["predicted"]["band_mae_shifted_mev"] < 0.5 * ev["predicted"]["band_mae_shifted_mev"]


def test_the_bundled_density_model_keeps_the_spin_orbit_part_of_a_soc_run(tmp_path):
    """An nspin 4 run (Bi₂ A7 with SOC, a raw ABACUS directory): the probe step and H[ρ] add a spin-independent
    potential, so the predicted H is hermitian, its spin–orbit part is H(0)'s exactly, and its bands beat H(0)'s."""
    import json

    from click.testing import CliRunner

    from nextham_dft.cli import main

    res = CliRunner().invoke(main, ["predict", str(need(DATA / "runs" / "s0089")), "--out", str(tmp_path / "o"),
                                    "--model", "density", "--no-native"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "o" / "report.json").read_text())["eval"]
    assert ev["predicted"]["soc_mae_uev"] == pytest.approx(ev["h0"]["soc_mae_uev"], abs=1e-9)
    import h5py

    from nextham_dft.dataset import read_system

    with h5py.File(tmp_path / "o" / "hamiltonian.h5") as f:
        h = read_system(f[next(iter(f))]).matrices["H"]
    assert h.spin == "spinor" and h.hermiticity_error < 1e-10  # H(R) = H(−R)†, spinor blocks included
    assert ev["predicted"]["band_mae_shifted_mev"] < 0.2 * ev["h0"]["band_mae_shifted_mev"]
    assert ev["predicted"]["h_mae_shifted_mev"] < 0.5 * ev["h0"]["h_mae_shifted_mev"]


def test_density_models_combine_into_an_ensemble_and_not_with_correction_networks(tmp_path):
    import json

    from nextham_dft.model.density_net import DensityEnsemble
    from nextham_dft.model.store import ModelFileError, bundled_model_path, combine_models, save_model

    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(DensityNet(SMALL))
        save_model(tmp_path / f"d{seed}.pt", nets[-1], {"name": f"d{seed}", "split": {"train": ["a"]}, "elements": ["Si"]})
    ens, card = combine_models([tmp_path / "d0.pt", tmp_path / "d1.pt"])
    assert isinstance(ens, DensityEnsemble) and len(card["members"]) == 2
    lat, pos, z, c1 = _random_input(3, 4)
    mean = (_run(nets[0], lat, pos, z, c1.float()) + _run(nets[1], lat, pos, z, c1.float())) / 2
    assert torch.allclose(_run(ens, lat, pos, z, c1.float()), mean, atol=1e-6)
    save_model(tmp_path / "other.pt", DensityNet(DensityConfig()), {"name": "o", "split": {"train": ["a"]}})
    with pytest.raises(ModelFileError, match="configuration"):
        combine_models([tmp_path / "d0.pt", tmp_path / "other.pt"])
    fast = bundled_model_path("fast")
    split = json.loads(fast.with_suffix(".json").read_text())["split"]
    save_model(tmp_path / "same_split.pt", nets[0], {"name": "d", "split": split})
    with pytest.raises(ModelFileError, match="cannot be averaged"):
        combine_models([tmp_path / "same_split.pt", fast])


def test_bad_density_options_are_one_line_errors_and_write_nothing(tmp_path):
    """--scf-steps 0 is refused by the option itself; `ensemble` of a density model with a correction network
    is one line and leaves no output file."""
    from click.testing import CliRunner

    from nextham_dft.cli import main
    from nextham_dft.model.store import bundled_model_path

    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(tmp_path / "o"), "--model", "density",
                                    "--scf-steps", "0"])
    assert res.exit_code != 0 and "--scf-steps" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(main, ["ensemble", str(bundled_model_path("density")), str(bundled_model_path("fast")),
                                    "-o", str(tmp_path / "e.pt")])
    assert res.exit_code != 0 and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "e.pt").exists()


def test_the_density_recipe_makes_samples_and_trains_on_any_gaussian_widths_and_refuses_a_mismatch(tmp_path, si2):
    """scripts/density_recipe end to end on the shipped example: samples and a network with other widths
    (--sigmas, --lmax), a model file whose config holds them; training on samples of another basis is a
    one-line error; --linear-response and a cut graph (--r-max) reach the model's config, a cutoff beyond the
    samples' graph, a probe step the samples were made without, a negative probe, other probe inputs than the
    samples' and a loss against the secant density without a probe are one-line errors."""
    import json
    import subprocess
    import sys

    import h5py

    from nextham_dft.dataset import write_system
    from nextham_dft.model.store import load_model

    recipe = EXAMPLE.parents[1] / "scripts" / "density_recipe"
    with h5py.File(tmp_path / "data.h5", "w") as f:
        write_system(f.create_group("si2"), si2)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["si2"], "val": ["si2"], "test": []}))
    basis = ["--lmax", "1", "--sigmas", "0.3,0.6"]

    def run(script, *args):
        return subprocess.run([sys.executable, str(recipe / script), *args], capture_output=True, text=True, timeout=600)

    made = run("make_samples.py", str(tmp_path / "data.h5"), str(tmp_path / "samples"), *basis)
    assert made.returncode == 0, made.stderr
    trained = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "m.pt"), *basis,
                  "--epochs", "2", "--linear-response", "--r-max", "4")
    assert trained.returncode == 0, trained.stderr
    model, card = load_model(tmp_path / "m.pt")
    assert card["kind"] == "density" and tuple(model.cfg.sigmas) == (0.3, 0.6) and model.cfg.lmax == 1
    assert model.cfg.linear_response and model.cfg.r_max == 4.0
    far = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), *basis,
              "--r-max", "7")
    assert far.returncode != 0 and "--r-max" in far.stderr and len(far.stderr.strip().splitlines()) == 1
    wrong = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), "--epochs", "2")
    assert wrong.returncode != 0 and not (tmp_path / "w.pt").exists()
    assert "coefficients per atom" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    bad = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), "--sigmas", "0.6,0.3")
    assert bad.returncode != 0 and "increasing" in bad.stderr
    probe = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), *basis,
                "--probe", "0.3")  # samples made without the probe step
    assert probe.returncode != 0 and "--probe" in probe.stderr and len(probe.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w.pt").exists()
    negative = run("make_samples.py", str(tmp_path / "data.h5"), str(tmp_path / "s2"), "--probe", "-1")
    assert negative.returncode != 0 and "--probe" in negative.stderr and not (tmp_path / "s2").exists()
    negative = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), *basis,
                   "--probe", "-0.3")  # not silently a model without the probe
    assert negative.returncode != 0 and "--probe" in negative.stderr and len(negative.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w.pt").exists()
    probe = [*basis, "--probe", "0.3"]
    made = run("make_samples.py", str(tmp_path / "data.h5"), str(tmp_path / "ps"), *probe, "--probe-inputs", "screened")
    assert made.returncode == 0, made.stderr
    other = run("train.py", str(tmp_path / "ps"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), *probe)
    assert other.returncode != 0 and "--probe-inputs" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w.pt").exists()
    trained = run("train.py", str(tmp_path / "ps"), str(tmp_path / "split.json"), str(tmp_path / "q.pt"), *probe,
                  "--probe-inputs", "screened", "--epochs", "2")
    assert trained.returncode == 0, trained.stderr
    assert load_model(tmp_path / "q.pt")[0].cfg.probe_inputs == "screened"
    log = run("train.py", str(tmp_path / "samples"), str(tmp_path / "split.json"), str(tmp_path / "w.pt"), *basis,
              "--loss", "secant-log")  # no probe step: no secant density to compare with
    assert log.returncode != 0 and "--loss" in log.stderr and len(log.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w.pt").exists()
