"""Training data and training loop of the density network (:mod:`.density_net`).

Per structure (a System with H0, H, S and the pseudopotentials' atomic densities):

- c1: the network's input: the Gaussian fit of Δρ1 = ρ_out(H(0)) − ρ_atoms; with ``DensityConfig.probe``,
  the fits of a secant density built from Δρ1 and a probe step's output, and of the probe's response
  (:func:`first_step`);
- c*: the fit of Δρ* = ρ_out(H) − ρ_atoms, the density of the converged H, its target;
- the metric M = K_C + w·G of coefficient errors: K_C the Coulomb (Hartree) energy matrix
  4π e²/(4πε0) Σ_G≠0 ĝ_i(G)* ĝ_j(G)/G² / V, G the L2 overlap, w (eV Å³, ``xc_weight``) standing in for the
  xc kernel at valence densities; δcᵀ M δc (eV) is about the Hxc energy of the density error, the
  quantity whose potential the H inherits.

The loss is the mean over structures of δcᵀ M δc per atom, divided by its value for δc = c* on the
training set (so 1 is "no change from the atoms", the H(0) baseline).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.gaussians import Sites, basis_matrix, densities_of, fit_densities, fit_density
from ..core.hxc import hartree_potential, hxc_kernel_action
from ..core.krylov import radau_factor
from ..core.scf import SelfConsistency
from .density_net import DensityConfig, DensityNet, atom_graph, density_sites, instance_scale


@dataclass
class DensitySample:
    """One structure's training data (tensors float32; see the module docstring)."""

    sid: str
    z: torch.Tensor
    c1: torch.Tensor
    cstar: torch.Tensor
    metric: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    vec: torch.Tensor
    #: ``DensityConfig.probe_inputs`` of the inputs c1 (with a probe step)
    probe_inputs: str = "response"
    #: ``DensityConfig.secant`` of the inputs c1 (with a probe step)
    secant: str = "projection"


def metric_kernel(sc: SelfConsistency, x: np.ndarray, xc_weight: float) -> np.ndarray:
    """The metric of :func:`coefficient_metric` applied to a density x on the grid of ``sc``: its Hartree potential
    plus xc_weight·x (eV; ∫ y·(this) is the metric's inner product)."""
    return hartree_potential(x, sc.lattice) + xc_weight * x


def secant_factor(sc: SelfConsistency, d1: np.ndarray, u: np.ndarray, beta: float, xc_weight: float,
                  method: str = "projection") -> float:
    """b of the secant density Δρ1 + b·u (module docstring): u = Δρ2 − Δρ1 is β·J·Δρ1, the response to the probe
    step βΔρ1. Modelling J as one screening constant −γ, u = −βγΔρ1 and the fixed point is Δρ1/(1 + γ) =
    Δρ1 + u/(β(1 + γ)). In the metric of :func:`coefficient_metric` (Hartree + xc_weight·L2, on the grid):

    - "projection": γ by least squares, u ≈ −βγΔρ1, with γ ≥ 0 (a density change is screened, never amplified);
    - "anderson": b = a/β with a minimising the linear model's residual ‖(1 − a)Δρ1 + (a/β)u‖ at ρ_atoms + aβΔρ1
      (a two-point Anderson step), a in (0, 1], else 1 (γ < 0: clamped as above). It equals "projection" when u is a multiple of Δρ1, and does not
      follow a large u that is not (monolayers in vacuum, whose projection secant is worse than Δρ1 itself).

    - "radau": J is self-adjoint and ≤ 0 in this metric (about the Hxc kernel K, J = χ0K), and the probe gives three
      moments of its spectrum on Δρ1: m0 = ⟨Δρ1, Δρ1⟩, m1 = ⟨Δρ1, u⟩/β, m2 = ⟨u, u⟩/β². Projection matches one node
      λ̄ = m1/m0 to the first two. Here the spectrum is two nodes, one fixed at λ = 0 (the parts the crystal does not
      screen) and λ1 = m2/m1, which matches all three; on it the fixed point is exactly Δρ1 + u/(β(1 − λ1)), so
      b = 1/(β(1 − λ1)) (m1 ≥ 0: 1/β, clamped as above). It equals "projection" when u is a multiple of Δρ1, and
      screens a u that is not harder: a layer in vacuum screens in-plane changes strongly and others weakly. The
      metric is not exactly K, so J is self-adjoint in it only roughly: ⟨JΔρ1, JΔρ1⟩ and ⟨Δρ1, J²Δρ1⟩ differ by 16%
      on average over the bundled data, 40–60% on ionic crystals, where "projection" does better
      (scripts/diagnostics/secant_factors.py --second-probe).
    - "radau-hxc": "radau" with the moments in the Hartree + xc kernel K at ρ_atoms (``core.hxc.hxc_kernel_action``),
      in which J = χ0K is self-adjoint in linear response (measured: J's asymmetry has median 0.02 there, 0.10 in the
      training metric). Where K is not positive on the pair (⟨u, Ku⟩ ≤ 0) or the response amplifies
      (⟨Δρ1, Ku⟩ ≥ 0), "radau" as above.

    Either way 0 < b ≤ 1/β."""
    if method in ("radau", "radau-hxc"):  # core.krylov.radau_factor from ⟨Δρ1, Ku⟩ and ⟨u, Ku⟩
        kernels = ([hxc_kernel_action(u, sc.rho_atoms, sc.rho_core, sc.lattice, sc.functional)]
                   if method == "radau-hxc" else [])
        for kernel_u in kernels + [metric_kernel(sc, u, xc_weight)]:  # the training metric: one Poisson solve
            b = radau_factor(float((d1 * kernel_u).sum() * sc.dv), float((u * kernel_u).sum() * sc.dv), beta)
            if b is not None:
                return b
        return 1.0 / beta  # the response amplifies: clamped as above
    if method == "anderson":
        v = d1 - u / beta  # the residual's change per unit a
        kernel_v = metric_kernel(sc, v, xc_weight)  # one Poisson solve
        vv = float((v * kernel_v).sum() * sc.dv)
        a = float((d1 * kernel_v).sum() * sc.dv) / vv if vv > 0 else 1.0
        return (a if 0.0 < a <= 1.0 else 1.0) / beta  # a ∉ (0, 1]: the response amplifies (γ < 0), as clamped above
    kernel_d1 = metric_kernel(sc, d1, xc_weight)  # the metric applied to Δρ1 (one Poisson solve)
    norm = float((d1 * kernel_d1).sum() * sc.dv)
    beta_gamma = max(0.0, -float((u * kernel_d1).sum() * sc.dv) / norm) if norm > 0 else 0.0  # the metric is symmetric
    return 1.0 / (beta + beta_gamma)


def input_ratio(sc: SelfConsistency, first: np.ndarray, second: np.ndarray, xc_weight: float) -> float:
    """‖second‖/‖first‖ of a probe model's two input densities (e/Å³ on the grid: the secant density Δρ_S and the
    response u, or b·u⊥ with "screened" inputs) in the metric of :func:`secant_factor`. With "response" inputs it
    grows with the crystal's screening γ (metals, ionic oxides); a network has seen it only up to its training
    set's largest (``DensityConfig.input_ratio_max``)."""
    norm = lambda x: float((x * metric_kernel(sc, x, xc_weight)).sum())  # noqa: E731
    den = norm(first)
    return math.sqrt(norm(second) / den) if den > 0 else math.inf


def coefficient_input_ratio(sample: DensitySample) -> float:
    """:func:`input_ratio` of a training sample with a probe step, from its fitted coefficients and metric (the
    same quantity up to the grid's discretisation)."""
    per = sample.c1.shape[1] // 2
    m = sample.metric.double()
    first, second = (sample.c1[:, sl].double().reshape(-1) for sl in (slice(0, per), slice(per, None)))
    return math.sqrt(float(second @ m @ second) / float(first @ m @ first))


@dataclass
class FirstStep:
    """inputs: (sites, inputs·per_atom) the network's input coefficients (:func:`first_step`); unresolved: with a
    probe, the part of the secant density (e/Å³, on the grid) that its Gaussian fit cannot hold, else None;
    secant: with a probe, b of :func:`secant_factor`, else None; ratio: with a probe, :func:`input_ratio`;
    steps: the Kohn–Sham steps taken, (ρ_in, ρ_out) e/Å³ on the grid: ρ_atoms's, and with a probe
    ρ_atoms + βΔρ1's (what ``core.scf.complete_scf(prior=...)`` takes)."""

    inputs: np.ndarray
    unresolved: np.ndarray | None = None
    secant: float | None = None
    ratio: float | None = None
    steps: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def first_step(sc: SelfConsistency, cfg: DensityConfig, sites: Sites | None = None) -> FirstStep:
    """The network's inputs on ``sites`` (default: :func:`.density_net.density_sites` of ``sc``'s system).
    Without ``cfg.probe``: the fit of Δρ1 = ρ_out(H(0)) − ρ_atoms (one diagonalisation). With ``cfg.probe`` = β > 0,
    a probe step gives Δρ2 = ρ_out(H[ρ_atoms + β Δρ1]) − ρ_atoms (one H[ρ] and a second diagonalisation), and the
    inputs are the fit of the secant density Δρ_S = Δρ1 + b(Δρ2 − Δρ1) (:func:`secant_factor` of the fits; the
    network corrects it) and the fit of Δρ2 − Δρ1 = β J Δρ1, the crystal's own response (``probe_inputs``
    "response"), or of Δρ_S − Δρ1/(1 + γ), the secant density's part beyond uniform screening ("screened").
    The part of Δρ_S the Gaussians cannot hold (sharp and l > lmax parts, such as tetrahedral bond charge) is
    kept on the grid: the converged density's is close to it."""
    sites = sites if sites is not None else density_sites(sc.system, cfg)[0]
    rho1, _ = sc.density(sc.h0)
    d1 = rho1 - sc.rho_atoms
    if cfg.probe <= 0:
        return FirstStep(fit_density(sites, sc.shape, sc.origin, sc.dv, d1, cfg.basis), steps=((sc.rho_atoms, rho1),))
    probe_in = sc.rho_atoms + cfg.probe * d1
    rho2, _ = sc.density(sc.hamiltonian(probe_in))
    u = rho2 - sc.rho_atoms - d1
    blocks = sc.gaussian_blocks(sites, cfg.basis)
    f1, fu = fit_densities(sites, sc.shape, sc.origin, sc.dv, [d1, u], cfg.basis, blocks)
    g1, gu = densities_of(sites, sc.shape, sc.origin, [f1, fu], cfg.basis, blocks)
    # γ from the fitted densities: the smooth part the network sees, in the metric it is trained in (the raw
    # densities' sharp core-region parts would weigh in the L2 term)
    b = secant_factor(sc, g1, gu, cfg.probe, cfg.xc_weight, cfg.secant)
    unresolved = d1 + b * u - (g1 + b * gu)
    # the second input w1·Δρ1 + wu·u: u itself, or ("screened") Δρ_S − Δρ1/(1 + γ) = b·u⊥, 1/(1 + γ) = β·b
    w1, wu = (0.0, 1.0) if cfg.probe_inputs == "response" else (1.0 - cfg.probe * b, b)
    ratio = input_ratio(sc, g1 + b * gu, w1 * g1 + wu * gu, cfg.xc_weight)
    return FirstStep(np.concatenate([f1 + b * fu, w1 * f1 + wu * fu], axis=1), unresolved - unresolved.mean(), b,
                     ratio, ((sc.rho_atoms, rho1), (probe_in, rho2)))


def coefficient_metric(sc: SelfConsistency, cfg: DensityConfig, sites: Sites | None = None) -> np.ndarray:
    """(n, n) eV: M = K_C + xc_weight·G of the Gaussians of every site (module docstring; ``sites`` as in
    :func:`first_step`); K_C from the Hartree potential of each function (``core.hxc.hartree_potential``,
    G = 0 left out)."""
    sites = sites if sites is not None else density_sites(sc.system, cfg)[0]
    cols = basis_matrix(sites, sc.shape, sc.origin, cfg.basis)
    gram = cols.T @ cols * sc.dv
    potentials = np.stack([hartree_potential(c.reshape(sc.shape), sc.lattice).reshape(-1) for c in cols.T], axis=1)
    coulomb = cols.T @ potentials * sc.dv
    return 0.5 * (coulomb + coulomb.T) + cfg.xc_weight * gram


def make_sample(system, cfg: DensityConfig, sid: str = "") -> DensitySample:
    """The training data of one System (H0, H, S, atomic densities)."""
    sc = SelfConsistency(system, cfg.spacing)
    rho_star, _ = sc.density(system.matrices["H"])
    sites, z = density_sites(system, cfg)
    cstar = fit_density(sites, sc.shape, sc.origin, sc.dv, rho_star - sc.rho_atoms, cfg.basis)
    src, dst, vec = atom_graph(sites.lattice, sites.positions, cfg.r_max)
    return DensitySample(sid or system.meta.get("id", ""), z,
                         torch.tensor(first_step(sc, cfg, sites).inputs, dtype=torch.float32),
                         torch.tensor(cstar, dtype=torch.float32),
                         torch.tensor(coefficient_metric(sc, cfg, sites), dtype=torch.float32),
                         torch.tensor(src), torch.tensor(dst), torch.tensor(vec, dtype=torch.float32),
                         cfg.probe_inputs, cfg.secant)


def neutralise_torch(c: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    """``core.gaussians.neutralised`` in torch (differentiable): the net charge removed, atoms alike."""
    total = (c @ charges).sum()
    return c - total * charges / (len(c) * (charges @ charges))


def _forward(model: DensityNet, samples: list[DensitySample], charges: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's neutralised predicted coefficients, the samples batched into one graph."""
    off, z, c1, src, dst, vec, spans = 0, [], [], [], [], [], []
    for s in samples:
        n = len(s.z)
        z.append(s.z), c1.append(s.c1), src.append(s.src + off), dst.append(s.dst + off), vec.append(s.vec)
        spans.append((off, off + n))
        off += n
    c = model(torch.cat(z), torch.cat(c1), torch.cat(src), torch.cat(dst), torch.cat(vec))
    return [neutralise_torch(c[a:b], charges) for a, b in spans]


def error_energies(model: DensityNet, samples: list[DensitySample], charges: torch.Tensor) -> list[torch.Tensor]:
    """δcᵀ M δc (eV) of each sample."""
    out = []
    for s, c in zip(samples, _forward(model, samples, charges)):
        d = (c - s.cstar).reshape(-1)
        out.append(d @ s.metric @ d)
    return out


def relative_error(model: DensityNet, samples: list[DensitySample], charges: torch.Tensor) -> float:
    """Σ δcᵀMδc / Σ c*ᵀMc* over ``samples`` (0: the converged density; 1: no better than the atoms')."""
    with torch.no_grad():
        num = sum(float(e) for e in error_energies(model, samples, charges))
    den = sum(float(s.cstar.reshape(-1) @ s.metric @ s.cstar.reshape(-1)) for s in samples)
    return num / den


#: the training losses of :class:`DensityTraining`
LOSSES = ("energy", "norm", "secant-log")


def structure_losses(energies: list[torch.Tensor], samples: list[DensitySample], charges: torch.Tensor, loss: str,
                     norm: float) -> torch.Tensor:
    """Each structure's term of :class:`DensityTraining`'s ``loss`` from its error energy δcᵀMδc (eV); ``norm``:
    the training set's mean c*ᵀMc* per atom."""
    per_atom = torch.stack([e / len(s.z) for e, s in zip(energies, samples)]) / norm
    if loss == "energy":
        return per_atom
    if loss == "norm":
        return torch.sqrt(per_atom + 1e-12)
    reference = []
    for s in samples:  # the secant density's own error, the first input (neutralised as the output is)
        d = (neutralise_torch(s.c1[:, :s.cstar.shape[1]], charges) - s.cstar).reshape(-1)
        reference.append(d @ s.metric @ d)
    return torch.log((torch.stack(energies) + 1e-12) / (torch.stack(reference) + 1e-12))


@dataclass
class DensityTraining:
    """epochs, batch (structures), lr (peak of a one-cycle schedule), clip (gradient norm), seed,
    eval_every (epochs between validations), weight_decay (AdamW's decoupled decay; 0: Adam), ema_decay, loss."""

    epochs: int = 300
    batch: int = 8
    lr: float = 1e-3
    clip: float = 0.3
    seed: int = 0
    eval_every: int = 5
    weight_decay: float = 0.0
    #: > 0: validate (and return) the exponential moving average of the weights with this decay per step
    ema_decay: float = 0.0
    #: what is minimised (and validated, to keep the best epoch), over structures: "energy", the mean of the error
    #: energies δcᵀMδc per atom (the squares: the largest errors dominate); "norm", the mean of their square roots
    #: (the band error is about linear in the norm); "secant-log", the mean of log(δcᵀMδc / δc_SᵀMδc_S), each
    #: structure's error against its secant density's (probe models: every structure weighs the same)
    loss: str = "energy"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r}: one of {', '.join(LOSSES)}")


def train_density(cfg: DensityConfig, train: list[DensitySample], val: list[DensitySample],
                  settings: DensityTraining, log: Callable[[str], None] = print) -> tuple[DensityNet, dict]:
    """The network with the lowest validation relative error (:func:`relative_error`) and a history
    {epoch, train, val, seconds}. ``cfg.avg_neighbours`` is replaced by the training set's mean."""
    torch.manual_seed(settings.seed)
    avg = float(np.mean([len(s.src) / len(s.z) for s in train]))
    cfg = DensityConfig.from_dict({**cfg.to_dict(), "avg_neighbours": avg})
    model = DensityNet(cfg)
    model.scale.copy_(instance_scale(model.irreps_in, torch.cat([s.c1 for s in train])))
    charges = torch.tensor(cfg.basis.charges(), dtype=torch.float32)
    norm = float(np.mean([float(s.cstar.reshape(-1) @ s.metric @ s.cstar.reshape(-1)) / len(s.z) for s in train]))
    opt = (torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
           if settings.weight_decay > 0 else torch.optim.Adam(model.parameters(), lr=settings.lr))
    steps = settings.epochs * math.ceil(len(train) / settings.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps)
    shadow = copy.deepcopy(model) if settings.ema_decay > 0 else model  # what is validated and returned
    best, best_state, history, t0 = math.inf, None, [], time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        perm = torch.randperm(len(train)).tolist()
        total = 0.0
        for i in range(0, len(train), settings.batch):
            batch = [train[j] for j in perm[i:i + settings.batch]]
            loss = structure_losses(error_energies(model, batch, charges), batch, charges, settings.loss, norm).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
            opt.step()
            sched.step()
            if shadow is not model:
                with torch.no_grad():
                    for a, b in zip(shadow.parameters(), model.parameters()):
                        a.mul_(settings.ema_decay).add_(b, alpha=1.0 - settings.ema_decay)
            total += float(loss.detach()) * len(batch)
        if epoch % settings.eval_every == 0 or epoch == settings.epochs:
            shadow.eval()
            if settings.loss == "energy":
                v = relative_error(shadow, val, charges)
            else:
                with torch.no_grad():
                    v = float(structure_losses(error_energies(shadow, val, charges), val, charges, settings.loss,
                                               norm).mean())
            if v < best:
                best, best_state = v, {k: x.clone() for k, x in shadow.state_dict().items()}
            history.append({"epoch": epoch, "train": total / len(train), "val": v,
                            "seconds": time.perf_counter() - t0})
            log(f"epoch {epoch}: train {total / len(train):.4f}, val {v:.4f} (best {best:.4f}), "
                f"{time.perf_counter() - t0:.0f} s")
    shadow.load_state_dict(best_state)
    shadow.eval()
    return shadow, {"history": history, "best_val": best, "avg_neighbours": avg}
