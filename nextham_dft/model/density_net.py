"""The density network: the converged density change Δρ* = ρ − ρ_atoms from the first step's, Δρ1.

Why a density. ΔH = H − H(0) is the matrix of one local potential, the change of the Hartree + xc
potential that the SCF's density change makes (:mod:`nextham_dft.core.scf`). A network that predicts
ΔH entry by entry learns the potential of a density it never sees; one that predicts the density gets
H from :meth:`core.scf.SelfConsistency.hamiltonian`, a valid Kohn–Sham H of a density by construction.

What it maps. H(0)'s own occupied states give ρ_out(H(0)) = ρ_atoms + Δρ1, the first SCF step's output.
In linear response the converged change is the screened first one, Δρ* = (1 − χ0 K)⁻¹ Δρ1: the network
learns that screening, environment by environment. With ``DensityConfig.probe`` (the bundled model) a probe
step measures the crystal's own screening, a secant density follows from it with no network
(``density_train.first_step``), and the network learns only its correction. Both densities are represented by atom-centred
Gaussians (:mod:`nextham_dft.core.gaussians`, per atom the irreps 3x0e+3x1o+3x2e for three widths;
``lmax`` 3 adds 3x3o: the bond charge of a tetrahedral crystal is an l = 3 function of its atoms' site
symmetry, and the l ≤ 2 fit of Si's converged density misses most of it — yet trained networks with l ≤ 3
gave worse validation bands than with l ≤ 2, scripts/density_recipe/README.md), so
the map is between per-atom irreps and E(3)-equivariant (parity included: a density is a true scalar;
time reversal leaves a density alone, so it holds trivially) — tested.

Architecture (NequIP-style): element embedding from periodic-table descriptors (an element absent from
training gets one from its own properties) and the Δρ1 coefficients → hidden irreps; ``layers``
interactions, each a tensor product of neighbours' features with Y(r̂) (l ≤ 2) weighted by an MLP of a
radial Bessel basis and both atoms' embeddings, summed over neighbours within ``r_max``, a gated update
and a residual; out: a linear map of the hidden features plus a linear map of the input coefficients.
The predicted coefficients are neutralised (the cell keeps its electron count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from e3nn import o3
from torch import nn

from ..core.density import periodic_pairs
from ..core.gaussians import GaussianBasis, Sites, bond_midpoints
from .elements import DescriptorEmbedding, atomic_numbers
from .network import _gate_for, bessel, plain_einsum_codegen

#: the node label of a bond midpoint (atoms carry their Z; 0 is the unknown element)
BOND = -1

#: the second input of a model with a probe step (``DensityConfig.probe_inputs``)
PROBE_INPUTS = ("response", "screened")
#: how a model with a probe step sets its secant factor (``DensityConfig.secant``, ``density_train.secant_factor``)
SECANTS = ("projection", "anderson", "radau", "radau-hxc")


@dataclass(frozen=True)
class DensityConfig:
    """sigmas (Å), lmax, ridge: the Gaussians of the densities (``core.gaussians.GaussianBasis``);
    spacing: Å, the grid of the densities (``core.scf``); hidden_irreps, layers: the network; r_max: Å,
    neighbours' cutoff; num_rbf: radial basis size; embed_dim, embed_hidden: element embedding;
    avg_neighbours: the messages' normalisation (mean neighbour count of the training set);
    xc_weight: eV Å³, the L2 part of the training metric beside the Coulomb one (core.gaussians);
    screening: see the field."""

    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0)
    lmax: int = 2
    ridge: float = 1e-3
    spacing: float = 0.15
    hidden_irreps: str = "32x0e+16x1o+16x2e+8x0o+8x1e+8x2o"
    layers: int = 3
    r_max: float = 6.0
    num_rbf: int = 8
    embed_dim: int = 32
    embed_hidden: int = 32
    avg_neighbours: float = 30.0
    xc_weight: float = 20.0
    #: environment-dependent screening: per atom and l, a widths × widths matrix from the atom's invariant
    #: features mixes its input coefficients into the output (Δρ* as a locally screened Δρ1); zero-initialised
    screening: bool = False
    #: Gaussians at the midpoints of the nearest-neighbour bonds too (``core.gaussians.bond_midpoints``): the
    #: midpoints are nodes of the graph with a learned embedding of their own, in and out like the atoms
    bond_sites: bool = False
    #: a bond joins atoms closer than this times the shorter of their nearest-neighbour distances
    bond_factor: float = 1.2
    #: the output is linear in Δρ1, as linear response is (Δρ* = (1 − χ0 K)⁻¹ Δρ1): the hidden features see
    #: only the elements and the geometry, and they set the on-site screening matrices (as ``screening``) and
    #: the kernels of a neighbour term Σ_j TP(Δρ1_j, Y(r̂_ij)); no term independent of Δρ1, so Δρ1 = 0 gives
    #: Δρ* = 0 and twice Δρ1 gives twice Δρ*
    linear_response: bool = False
    #: > 0: a probe step from ρ_atoms + probe·Δρ1 (one more diagonalisation) measures the crystal's own response
    #: J·Δρ1; the inputs become a secant density built from the two steps and that response
    #: (``density_train.first_step``), and the network predicts the correction to the secant density
    probe: float = 0.0
    #: with ``probe``, the second input: "response", the probe's response u = Δρ2 − Δρ1 = β·J·Δρ1 itself, which
    #: grows with the crystal's screening (γ); or "screened", b·u⊥ = Δρ_S − Δρ1/(1 + γ), the part of the secant
    #: density beyond one uniform screening constant, at the scale of the converged density change whatever γ
    probe_inputs: str = "response"
    #: with ``probe``: the largest ratio of the two inputs' sizes (``density_train.input_ratio``; with "response"
    #: inputs ‖u‖/‖Δρ_S‖, which grows with the screening) over the training set, set by the training script; a
    #: crystal beyond it gets the secant density without the network's correction (the network would
    #: extrapolate), and the prediction says so. 0: no limit
    input_ratio_max: float = 0.0
    #: with ``probe``: how the secant factor b is set (``density_train.secant_factor``): "projection" (γ from the
    #: projection of the response on Δρ1), "anderson" (the two-point residual minimum), "radau" (the fixed
    #: point of a two-node screening spectrum with one node at zero) or "radau-hxc" (the same with the spectrum's
    #: moments in the Hartree + xc kernel, where the response is closer to self-adjoint)
    secant: str = "projection"
    #: with ``probe``: the share λ of the network's correction to the secant density that the prediction keeps,
    #: c = c_S + λ (c_net − c_S) (1: all of it)
    correction_scale: float = 1.0
    #: with ``probe``, for an ensemble: scale the members' mean correction to the secant density by how far they
    #: agree, w = ‖δ̄‖² / (‖δ̄‖² + σ²), σ² the members' estimate of the mean's variance, in the training metric
    #: (``density_predict.shrunk_correction``); a single network is left as it is
    member_shrink: bool = False

    def __post_init__(self) -> None:
        if self.probe_inputs not in PROBE_INPUTS:
            raise ValueError(f"probe_inputs {self.probe_inputs!r}: one of {', '.join(PROBE_INPUTS)}")
        if self.secant not in SECANTS:
            raise ValueError(f"secant {self.secant!r}: one of {', '.join(SECANTS)}")
        if not 0.0 <= self.correction_scale <= 1.0:
            raise ValueError(f"correction_scale {self.correction_scale}: give a share in [0, 1]")
        if self.correction_scale != 1.0 and self.probe <= 0:
            raise ValueError("correction_scale needs a probe step (the share is of the correction to its secant density)")
        if self.member_shrink and self.probe <= 0:
            raise ValueError("member_shrink needs a probe step (it shrinks the correction to its secant density)")

    @property
    def inputs(self) -> int:
        """How many coefficient sets enter the network per site: Δρ1's; or, with ``probe``, the secant density's
        and the probe's response."""
        return 2 if self.probe > 0 else 1

    @property
    def basis(self) -> GaussianBasis:
        return GaussianBasis(tuple(self.sigmas), self.lmax, self.ridge)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DensityConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown density-model settings: {', '.join(unknown)}")
        d = dict(d)
        if "sigmas" in d:
            d["sigmas"] = tuple(float(s) for s in d["sigmas"])
        return cls(**d)


def density_sites(system, cfg: DensityConfig) -> tuple[Sites, torch.Tensor]:
    """The centres of a system's Gaussians (its atoms, then, with ``cfg.bond_sites``, its bond midpoints)
    and their node labels for the network: Z for the atoms (``elements.atomic_numbers``), −1 for bonds."""
    z = atomic_numbers(system.elements)
    pos = np.asarray(system.positions, dtype=float)
    if not cfg.bond_sites:
        return Sites(np.asarray(system.lattice, dtype=float), pos), z
    mids = bond_midpoints(system.lattice, pos, cfg.bond_factor)
    return (Sites(np.asarray(system.lattice, dtype=float), np.vstack([pos, mids])),
            torch.cat([z, torch.full((len(mids),), BOND, dtype=z.dtype)]))


def atom_graph(lattice: np.ndarray, positions: np.ndarray, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, vec Å) of every pair of sites closer than ``r_max`` Å (``core.density.periodic_pairs``): the
    message from src reaches dst along vec = r_src + T − r_dst."""
    return periodic_pairs(lattice, positions, r_max)


class Interaction(nn.Module):
    """h_i ← h_i + gate(W·Σ_j TP(h_j, Y(r̂_ij); w(r_ij, e_i, e_j)) / √n̄ + W'·h_i)."""

    def __init__(self, irreps: o3.Irreps, sh: o3.Irreps, num_rbf: int, embed_dim: int, avg_neighbours: float) -> None:
        super().__init__()
        self.avg_neighbours = avg_neighbours
        mid, ins = [], []
        for i1, (mul, ir1) in enumerate(irreps):
            for i2, (_, ir2) in enumerate(sh):
                for ir in ir1 * ir2:
                    if ir in irreps:
                        ins.append((i1, i2, len(mid), "uvu", True))
                        mid.append((mul, ir))
        mid, perm, _ = o3.Irreps(mid).sort()
        ins = [(a, b, perm[c], mode, train) for a, b, c, mode, train in ins]
        self.tp = o3.TensorProduct(irreps, sh, mid, ins, shared_weights=False, internal_weights=False)
        self.radial = nn.Sequential(nn.Linear(num_rbf + 2 * embed_dim, 64), nn.SiLU(), nn.Linear(64, self.tp.weight_numel))
        self.gate = _gate_for(irreps)
        self.mix = o3.Linear(mid.simplify(), self.gate.irreps_in)
        self.self_connection = o3.Linear(irreps, self.gate.irreps_in)

    def forward(self, h, e, src, dst, sh, rbf):
        w = self.radial(torch.cat([rbf, e[src], e[dst]], 1))
        m = self.tp(h[src], sh, w)
        agg = torch.zeros(len(h), m.shape[1], dtype=m.dtype, device=m.device).index_add(0, dst, m)
        return h + self.gate(self.mix(agg / math.sqrt(self.avg_neighbours)) + self.self_connection(h))


class NeighbourResponse(nn.Module):
    """Σ_j TP(x_j, Y(r̂_ij); w(r_ij, f_i, f_j)) / √n̄: linear in the coefficients x, with kernels from the
    radial basis and both sites' invariant features f."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, sh: o3.Irreps, num_rbf: int, feat_dim: int,
                 avg_neighbours: float) -> None:
        super().__init__()
        self.avg_neighbours = avg_neighbours
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, sh, irreps_out, shared_weights=False, internal_weights=False)
        self.radial = nn.Sequential(nn.Linear(num_rbf + 2 * feat_dim, 64), nn.SiLU(), nn.Linear(64, self.tp.weight_numel))
        with torch.no_grad():  # start at "no neighbour response"
            self.radial[-1].weight.zero_()
            self.radial[-1].bias.zero_()

    def forward(self, x, f, src, dst, sh, rbf):
        w = self.radial(torch.cat([rbf, f[src], f[dst]], 1))
        m = self.tp(x[src], sh, w)
        return torch.zeros(len(x), m.shape[1], dtype=m.dtype, device=m.device).index_add(0, dst, m) / math.sqrt(
            self.avg_neighbours)


class DensityNet(nn.Module):
    """(sites, per_atom) coefficients of Δρ* from the sites' labels z (sites,: Z, or ``BOND`` for a bond
    midpoint; :func:`density_sites`), the input coefficients (sites, inputs·per_atom: Δρ1's, or with
    ``cfg.probe`` the secant density's, which the output corrects, and the probe's response;
    :func:`.density_train.first_step`) and the graph (src, dst, vec Å)
    of :func:`atom_graph` over the sites; per_atom in the order of ``cfg.basis.irreps``. ``scale``
    (inputs·per_atom,): the inputs' typical size per irrep instance."""

    def __init__(self, cfg: DensityConfig) -> None:
        super().__init__()
        with plain_einsum_codegen():
            self._build(cfg)

    def _build(self, cfg: DensityConfig) -> None:
        self.cfg = cfg
        self.irreps = o3.Irreps(cfg.basis.irreps)
        self.irreps_in = o3.Irreps("+".join([str(self.irreps)] * cfg.inputs))  # one copy per input set
        hidden = o3.Irreps(cfg.hidden_irreps).sort().irreps.simplify()  # the gate's output order
        self.sh = o3.Irreps.spherical_harmonics(2)
        self.embed = DescriptorEmbedding(cfg.embed_dim, cfg.embed_hidden)
        if cfg.bond_sites:
            self.bond_embed = nn.Parameter(torch.randn(cfg.embed_dim) / math.sqrt(cfg.embed_dim))
        self.register_buffer("scale", torch.ones(self.irreps_in.dim))
        features = o3.Irreps(f"{cfg.embed_dim}x0e")
        self.inp = o3.Linear(features if cfg.linear_response else features + self.irreps_in, hidden)
        self.layers = nn.ModuleList([Interaction(hidden, self.sh, cfg.num_rbf, cfg.embed_dim, cfg.avg_neighbours)
                                     for _ in range(cfg.layers)])
        if not cfg.linear_response:  # linear response has no term independent of Δρ1
            self.out = o3.Linear(hidden, self.irreps)
        self.skip = o3.Linear(self.irreps_in, self.irreps)
        with torch.no_grad():  # start near "no change": the first steps do not fling the densities
            if not cfg.linear_response:
                self.out.weight.mul_(0.1)
            self.skip.weight.mul_(0.0 if cfg.probe > 0 else 0.1)  # with a probe: start at the secant density
        if cfg.screening or cfg.linear_response:
            start = 0
            for mul, ir in hidden:  # the hidden features' invariant (0e) block
                if ir == o3.Irrep("0e"):
                    self._scalars = (start, start + mul)
                    break
                start += mul * ir.dim
            nw = len(cfg.sigmas)
            self.screen = nn.Sequential(nn.Linear(self._scalars[1] - self._scalars[0], 64), nn.SiLU(),
                                        nn.Linear(64, cfg.inputs * (cfg.lmax + 1) * nw * nw))
            with torch.no_grad():
                self.screen[-1].weight.zero_()
                self.screen[-1].bias.zero_()
        if cfg.linear_response:
            self.response = NeighbourResponse(self.irreps_in, self.irreps, self.sh, cfg.num_rbf,
                                              cfg.embed_dim + self._scalars[1] - self._scalars[0], cfg.avg_neighbours)

    def _screened(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per atom, input set and l: M_l(h's invariants) (widths × widths) applied to the widths of that set's
        l-block of x, the same for every m (so it commutes with rotations); summed over the input sets."""
        nw, n, nl = len(self.cfg.sigmas), len(x), self.cfg.lmax + 1
        m = self.screen(h[:, self._scalars[0]:self._scalars[1]]).view(n, self.cfg.inputs, nl, nw, nw)
        out, off = 0, 0
        for k in range(self.cfg.inputs):
            parts = []
            for l in range(nl):
                width = nw * (2 * l + 1)
                block = x[:, off:off + width].view(n, nw, 2 * l + 1)
                parts.append(torch.einsum("nab,nbm->nam", m[:, k, l], block).reshape(n, width))
                off += width
            out = out + torch.cat(parts, 1)
        return out

    def forward(self, z: torch.Tensor, c1: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                vec: torch.Tensor) -> torch.Tensor:
        e = self.embed(z.clamp(min=0))
        if self.cfg.bond_sites:
            e = torch.where((z == BOND)[:, None], self.bond_embed.to(e.dtype).expand_as(e), e)
        x = c1 / self.scale
        h = self.inp(e if self.cfg.linear_response else torch.cat([e, x], 1))
        sh = o3.spherical_harmonics(self.sh, vec, normalize=True, normalization="component")
        rbf = bessel(vec.norm(dim=1), self.cfg.num_rbf, self.cfg.r_max)
        for layer in self.layers:
            h = layer(h, e, src, dst, sh, rbf)
        if self.cfg.linear_response:
            f = torch.cat([e, h[:, self._scalars[0]:self._scalars[1]]], 1)
            out = self.skip(x) + self._screened(h, x) + self.response(x, f, src, dst, sh, rbf)
        else:
            out = self.out(h) + self.skip(x)
            if self.cfg.screening:
                out = out + self._screened(h, x)
        out = out * self.scale[:self.irreps.dim]  # in the first input's units
        return c1[:, :self.irreps.dim] + out if self.cfg.probe > 0 else out


def instance_scale(irreps: o3.Irreps, coefficients: torch.Tensor) -> torch.Tensor:
    """(irreps.dim,) the root-mean-square norm of each irrep instance over the rows of ``coefficients``,
    repeated over its components (an invariant normalisation: equivariance is kept)."""
    out = torch.ones(irreps.dim, dtype=coefficients.dtype)
    k = 0
    for mul, ir in irreps:
        for _ in range(mul):
            out[k:k + ir.dim] = coefficients[:, k:k + ir.dim].pow(2).sum(1).mean().sqrt() / math.sqrt(ir.dim) + 1e-6
            k += ir.dim
    return out


class DensityEnsemble(nn.Module):
    """The mean coefficients of several DensityNets of one configuration."""

    def __init__(self, members: list[DensityNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(self, *args) -> torch.Tensor:
        return sum(m(*args) for m in self.members) / len(self.members)


def density_members(model: nn.Module) -> list[DensityNet]:
    return list(model.members) if isinstance(model, DensityEnsemble) else [model]


def is_density_model(model: nn.Module) -> bool:
    """A density network (or an average of several): it predicts Δρ, and H through core.scf."""
    return isinstance(model, (DensityNet, DensityEnsemble))
