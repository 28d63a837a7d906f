"""Apply a density network to a System: H = H[ρ_atoms + Δρ_pred] (``core.scf``), one evaluation, no loop.

Cost: setting up the density grid, one diagonalisation of H(0) on the run's k-mesh (the input Δρ1), the
two Gaussian fits' worth of grid work, the network (milliseconds) and one H[ρ] — about two iterations of
the self-consistent completion, which needs seven or eight to converge. A model with a probe step
(``DensityConfig.probe``) adds one H[ρ] and one diagonalisation, and keeps the part of its secant density
that the Gaussians cannot hold.

Routes (``ROUTES``; ``predict --model density | refined | select``): the prediction alone; the prediction and one
Pulay step over the Kohn–Sham steps it took (:func:`predict_refined`, the CLI's default where a density model serves;
one diagonalisation and one H[ρ] more); or the prediction or the Krylov secant, whichever has the smaller residual
(:func:`predict_selected`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.blocks import BlockSparse
from ..core.gaussians import Sites, density_of, neutralised
from ..core.scf import SelfConsistency
from .density_net import DensityConfig, atom_graph, density_members, density_sites
from .density_train import FirstStep, first_step, metric_kernel


def beyond_training(cfg: DensityConfig, step: FirstStep) -> bool:
    """Whether the crystal's inputs are larger, relative to each other, than any of the training set's
    (``DensityConfig.input_ratio_max``, with 1e-4 relative to spare the training crystals themselves: their grid
    and coefficient ratios agree to about 1e-6): then the network's correction is left out."""
    return step.ratio is not None and cfg.input_ratio_max > 0 and step.ratio > cfg.input_ratio_max * (1 + 1e-4)


def shrunk_correction(secant: np.ndarray, members: list[np.ndarray],
                      norm2: Callable[[np.ndarray], float]) -> tuple[np.ndarray, float]:
    """(c_S + w·δ̄, w): the members' mean correction δ̄ = mean_k (c_k − c_S) to the secant coefficients, scaled by
    the Wiener factor w = ‖δ̄‖² / (‖δ̄‖² + σ²), where σ² = Σ_k ‖δ_k − δ̄‖² / (K(K − 1)) estimates the variance of the
    mean from the members' spread (``norm2``: the squared norm of a coefficient array). Members that agree keep
    their correction (w → 1); a correction smaller than their disagreement is mostly dropped. No free parameter."""
    k = len(members)
    deltas = [c - secant for c in members]
    mean = sum(deltas) / k
    signal = norm2(mean)
    noise = sum(norm2(d - mean) for d in deltas) / (k * (k - 1)) if k > 1 else 0.0
    w = signal / (signal + noise) if signal + noise > 0 else 1.0
    return secant + w * mean, w


def grid_norm2(sc: SelfConsistency, sites: Sites, cfg: DensityConfig) -> Callable[[np.ndarray], float]:
    """The squared norm of coefficients (sites, per_atom) in the training metric (Hartree + xc_weight·L2) of their
    density on the grid of ``sc`` (eV)."""
    def norm2(c: np.ndarray) -> float:
        x = density_of(sites, sc.shape, sc.origin, c, cfg.basis, sc.gaussian_blocks(sites, cfg.basis))
        return float((x * metric_kernel(sc, x, cfg.xc_weight)).sum() * sc.dv)
    return norm2


def network_coefficients(model: nn.Module, step: FirstStep, sites: tuple[Sites, torch.Tensor],
                         device: str = "cpu", sc: SelfConsistency | None = None,
                         info: dict | None = None) -> np.ndarray:
    """The neutralised Δρ* coefficients (sites, per_atom) the model gives for the inputs of ``step`` on
    ``sites`` (``density_net.density_sites``): the network's, or for a crystal :func:`beyond_training` the
    secant density's. The model is moved to ``device`` and float64 (in place). With ``cfg.member_shrink``, an
    ensemble's correction is :func:`shrunk_correction` in the metric of its density on the grid of ``sc`` (which it
    then needs), and ``info["member_weight"]`` is set to w when ``info`` is given."""
    cfg = model.cfg
    if beyond_training(cfg, step):  # the secant density alone: the network would extrapolate
        return neutralised(step.inputs[:, :cfg.basis.per_atom], cfg.basis)
    sites, z = sites
    src, dst, vec = atom_graph(sites.lattice, sites.positions, cfg.r_max)
    model = model.to(device=device, dtype=torch.float64).eval()
    shrink = cfg.member_shrink and len(density_members(model)) > 1
    if shrink and sc is None:
        raise ValueError("member_shrink measures the members' corrections on the density grid: pass sc")
    args = (z.to(device), torch.tensor(step.inputs, device=device), torch.tensor(src, device=device),
            torch.tensor(dst, device=device), torch.tensor(vec, device=device))
    with torch.no_grad():
        if shrink:
            secant = step.inputs[:, :cfg.basis.per_atom]
            members = [m(*args).cpu().numpy() for m in density_members(model)]
            c, w = shrunk_correction(secant, members, grid_norm2(sc, sites, cfg))
            if info is not None:
                info["member_weight"] = w
        else:
            c = model(*args).cpu().numpy()
    if cfg.probe > 0 and cfg.correction_scale != 1.0:  # keep a share of the correction to the secant density
        secant = step.inputs[:, :cfg.basis.per_atom]
        c = secant + cfg.correction_scale * (c - secant)
    return neutralised(c, cfg.basis)


def predicted_density(sc: SelfConsistency, sites: Sites, step: FirstStep, c: np.ndarray, cfg: DensityConfig) -> np.ndarray:
    """ρ = ρ_atoms + Σ c g (+ the secant density's unresolved part, with a probe), e/Å³ on the grid of ``sc``."""
    rho = sc.rho_atoms + density_of(sites, sc.shape, sc.origin, c, cfg.basis, sc.gaussian_blocks(sites, cfg.basis))
    return rho + step.unresolved if step.unresolved is not None else rho


def predict_density_coefficients(model: nn.Module, sc: SelfConsistency, device: str = "cpu",
                                 sites: tuple[Sites, torch.Tensor] | None = None,
                                 info: dict | None = None) -> tuple[FirstStep, np.ndarray]:
    """(step, c): the first step (``density_train.first_step``: the network's inputs and, with ``cfg.probe``, the
    secant density's part the Gaussians cannot hold) and :func:`network_coefficients`, on the grid of ``sc``.
    ``sites``: ``density_net.density_sites`` of ``sc``'s system when already at hand; ``info``: as
    :func:`network_coefficients`'s."""
    sites = sites if sites is not None else density_sites(sc.system, model.cfg)
    step = first_step(sc, model.cfg, sites[0])
    return step, network_coefficients(model, step, sites, device, sc, info)


@dataclass
class DensityPrediction:
    """hamiltonian: H[ρ] (eV) on H(0)'s and S's blocks; density: ρ = ρ_atoms + Δρ_pred (e/Å³) on the grid of
    ``consistency`` (which a completion can reuse: ``core.scf.complete_scf(start_density=...)``);
    timings: seconds per stage; probe: with a probe step, what it measured ({probe: β, secant_factor: b,
    screening_gamma: γ = 1/(βb) − 1, the screening the secant factor applies to the probe's response (the
    one-constant screening Δρ* ≈ Δρ1/(1 + γ) for "projection", the screened node's −λ1 for "radau");
    input_ratio, input_ratio_max: the inputs' ratio and the training set's largest; network_used: false beyond
    it, where ρ is the secant density; member_weight: with ``member_shrink``, the ensemble's w}), else None; steps: the
    (input, output) densities of the Kohn–Sham steps the prediction took (ρ_atoms's, and with a probe ρ_atoms +
    βΔρ1's), which a completion can start its Pulay history with (``complete_scf(prior=...)``); output: (ρ_out, E_F)
    of the occupied states of ``hamiltonian`` when the prediction measured them (:func:`predict_selected`), which a
    completion can start from (``complete_scf(start_output=...)``)."""

    hamiltonian: BlockSparse
    density: np.ndarray
    consistency: SelfConsistency
    timings: dict
    probe: dict | None = None
    steps: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    output: tuple[np.ndarray, float] | None = None


def predict_density(model: nn.Module, system, device: str = "cpu") -> DensityPrediction:
    """The density model's prediction for a run with H0, S, its k-mesh and atomic densities."""
    t0 = time.perf_counter()
    sc = SelfConsistency(system, model.cfg.spacing)
    t1 = time.perf_counter()
    sites = density_sites(system, model.cfg)
    info: dict = {}
    step, c = predict_density_coefficients(model, sc, device, sites, info)
    t2 = time.perf_counter()
    rho = predicted_density(sc, sites[0], step, c, model.cfg)
    h = sc.hamiltonian(rho)
    t3 = time.perf_counter()
    return DensityPrediction(h, rho, sc, {"grid_setup_s": t1 - t0, "first_step_and_network_s": t2 - t1,
                                          "hamiltonian_s": t3 - t2}, probe_report(model.cfg, step, info),
                             list(step.steps))


def probe_report(cfg: DensityConfig, step: FirstStep, info: dict) -> dict | None:
    """What a model's probe step measured (``DensityPrediction.probe``), None without one."""
    if step.secant is None:
        return None
    return {"probe": cfg.probe, "secant_factor": step.secant, "screening_gamma": 1.0 / (cfg.probe * step.secant) - 1.0,
            "input_ratio": step.ratio, "input_ratio_max": cfg.input_ratio_max or None,
            "network_used": not beyond_training(cfg, step), **info}


@dataclass
class Candidate:
    """A predicted density (e/Å³), its H[ρ] (eV), the density of that H's occupied states and its E_F (eV), and the
    residual ∫|ρ_out − ρ| / N_e."""

    density: np.ndarray
    hamiltonian: BlockSparse
    output: np.ndarray
    fermi_ev: float
    residual: float


def evaluate_candidate(sc: SelfConsistency, rho: np.ndarray) -> Candidate:
    """One Kohn–Sham evaluation of ``rho`` on the grid of ``sc``: H[ρ], its occupied states' density, the residual."""
    h = sc.hamiltonian(rho)
    out, ef = sc.density(h)
    return Candidate(rho, h, out, ef, sc.residual_norm(out - rho))


def select_by_residual(sc: SelfConsistency, densities: dict[str, np.ndarray]) -> tuple[str, dict[str, Candidate]]:
    """(the name of the density with the smallest residual, every density's :func:`evaluate_candidate`); a tie keeps
    the first given."""
    candidates = {name: evaluate_candidate(sc, rho) for name, rho in densities.items()}
    return min(candidates, key=lambda name: candidates[name].residual), candidates


def predict_selected(model: nn.Module, system, device: str = "cpu") -> DensityPrediction:
    """``predict --model select``: the density model's prediction and the network-free Krylov secant
    (``core.krylov``, sharing the model's first step and probe; one more probe), each evaluated once; the one with
    the smaller residual ∫|ρ_out − ρ| / N_e (the SCF's convergence measure: no threshold, nothing fitted) is kept.
    Cost over the model alone: two H[ρ] and three diagonalisations (the second probe, both evaluations). ``probe`` adds ``selected`` ("network" or
    "krylov"), both ``residuals`` and the secant's ``krylov`` report; ``steps`` holds every step taken but the kept
    candidate's evaluation, which is ``output``."""
    from ..core.krylov import krylov_secant

    cfg = model.cfg
    if cfg.probe <= 0:
        raise ValueError("the selection shares the model's probe step: give a density model with one")
    t0 = time.perf_counter()
    sc = SelfConsistency(system, cfg.spacing)
    t1 = time.perf_counter()
    sites = density_sites(system, cfg)
    info: dict = {}
    step, c = predict_density_coefficients(model, sc, device, sites, info)
    rho_net = predicted_density(sc, sites[0], step, c, cfg)
    t2 = time.perf_counter()
    ks = krylov_secant(sc, cfg.probe, first=(step.steps[0], step.steps[1]))
    t3 = time.perf_counter()
    kept, candidates = select_by_residual(sc, {"network": rho_net, "krylov": ks.density})
    t4 = time.perf_counter()
    best = candidates[kept]
    probe = {**(probe_report(cfg, step, info) or {}), "selected": kept,
             "residuals": {name: cand.residual for name, cand in candidates.items()},
             "krylov": ks.report()}
    # every step taken but the kept candidate's own, which a completion starts from (complete_scf adds it)
    steps = list(ks.steps) + [(cand.density, cand.output) for name, cand in candidates.items() if name != kept]
    return DensityPrediction(best.hamiltonian, best.density, sc,
                             {"grid_setup_s": t1 - t0, "first_step_and_network_s": t2 - t1, "second_probe_s": t3 - t2,
                              "evaluations_s": t4 - t3}, probe, steps, (best.output, best.fermi_ev))


def predict_density_hamiltonian(model: nn.Module, system, device: str = "cpu") -> tuple[BlockSparse, dict]:
    """(H (eV) on H(0)'s and S's blocks, timings in s): :func:`predict_density`'s H."""
    p = predict_density(model, system, device)
    return p.hamiltonian, p.timings


def predict_krylov(system, spacing: float = 0.15, beta: float = 0.3) -> DensityPrediction:
    """The network-free prediction (``predict --model krylov``): the Krylov secant density of ``core.krylov`` from the
    first step and two probe steps, and its H[ρ]. ``probe`` reports the secant's coefficients, nodes and form. A run
    a density model cannot serve (``compat.check_density_run``) is refused the same way."""
    from ..core.krylov import krylov_secant
    from .compat import check_density_run

    check_density_run(system, {})  # what a density model needs: UPF densities, a known functional, non-magnetic
    t0 = time.perf_counter()
    sc = SelfConsistency(system, spacing)
    t1 = time.perf_counter()
    ks = krylov_secant(sc, beta)
    t2 = time.perf_counter()
    h = sc.hamiltonian(ks.density)
    t3 = time.perf_counter()
    probe = {"krylov": {"probe": beta, **ks.report()}}
    return DensityPrediction(h, ks.density, sc, {"grid_setup_s": t1 - t0, "steps_s": t2 - t1, "hamiltonian_s": t3 - t2},
                             probe, list(ks.steps))


def refined(pred: DensityPrediction) -> DensityPrediction:
    """One Pulay step after a density prediction (``predict --model refined``, the default where a density model
    serves the run): its history the Kohn–Sham steps the prediction took (the first step and the probe) and the
    prediction's own evaluation (``core.scf.ScfSettings.prior_history``, the SCF's mixing), and H of the mixed density.
    Cost over the prediction: one diagonalisation and one H[ρ]. ``probe`` adds ``pulay_step`` (the prediction's
    residual ∫|ρ_out − ρ| / N_e and the history's length); ``steps`` holds the evaluation too."""
    from ..core.scf import ScfSettings, complete_scf

    t = time.perf_counter()
    sc = pred.consistency
    res = complete_scf(sc.system, settings=ScfSettings(spacing=sc.spacing, tol=0.0, max_iter=1, prior_history=True),
                       start_density=pred.density, consistency=sc, prior=pred.steps,
                       start_hamiltonian=pred.hamiltonian, start_output=pred.output)
    probe = {**(pred.probe or {}), "pulay_step": {"residual": res.residuals[0], "history": len(pred.steps) + 1}}
    return DensityPrediction(res.hamiltonian, res.density, sc, {**pred.timings, "pulay_step_s": time.perf_counter() - t},
                             probe, list(pred.steps) + res.steps)


def predict_refined(model: nn.Module, system, device: str = "cpu") -> DensityPrediction:
    """:func:`refined` of :func:`predict_density`."""
    return refined(predict_density(model, system, device))


#: how a density model predicts, by route name (``predict --model density | refined | select``)
ROUTES: dict[str, Callable] = {"density": predict_density, "refined": predict_refined, "select": predict_selected}

#: the routes a ``--model`` value names by themselves; each predicts with the bundled density model
NAMED_ROUTES = ("refined", "select")

#: what a route adds to its model's name (report.json, eval tables, benchmarks)
ROUTE_NAMES = {"density": "{}", "refined": "{} + one Pulay step (refined)",
               "select": "{} or the Krylov secant, by residual (select)"}


def route_name(route: str, model_name: str | None) -> str:
    """The name of ``model_name``'s prediction by ``route`` (:data:`ROUTE_NAMES`)."""
    return ROUTE_NAMES[route].format(model_name)
