"""Model and training configurations: frozen dataclasses ⇄ YAML (one key per field)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the H(0)-correction network.

    layout: shell slots ((l, zetas), ...) every species is padded into;
    hidden_irreps: node features; sh_lmax: edge spherical harmonics; r_max: Å,
    radial cutoff of messages; r_corr: Å, the correction cutoff (below); h0_scale, target_scale: eV, input and output
    normalisation; spin_head: predict the SOC (spin-dependent) correction too.
    """

    layout: tuple[tuple[int, int], ...] = ((0, 4), (1, 2), (2, 2), (3, 1))
    hidden_irreps: str = "16x0e+4x0o+4x1o+4x1e+4x2e+4x2o+2x3o+2x3e"
    sh_lmax: int = 3
    num_layers: int = 2
    num_rbf: int = 8
    r_max: float = 14.0
    embed_dim: int = 16
    mlp_hidden: int = 64
    h0_scale: float = 10.0
    target_scale: float = 0.05
    spin_head: bool = True
    #: trace-based non-linearity: invariants of the predicted ΔH blocks (per irrep, the trace of the
    #: projected block times its transpose) gate the correction a second time, and those of each atom's
    #: on-site block shift its potential; zero-initialised, so a model without it fine-tunes into it
    trace_feedback: bool = False
    #: Å. None: every block of H(0)'s pattern is corrected. A number: blocks between atoms farther
    #: apart than this keep H(0) exactly (ΔH = 0, SOC part too) and take no part in the network, so
    #: that training and prediction skip the many far, tiny blocks H(0) already gets right
    r_corr: float | None = None
    #: long-range electrostatics: each atom gets a charge q_i (e) from its invariant features; the
    #: periodic Ewald potential φ_i of the neutralised charges (eV, core.ewald) shifts its shell
    #: potentials by c[shell]·φ_i. The charge transfer of the SCF (H(0) is built from neutral atoms)
    #: acts through this long-range Hartree potential, which a cutoff-limited, attention-averaged
    #: message cannot sum. c starts at zero, so a model without it fine-tunes into it
    long_range: bool = False
    #: edge-specific messages: z_e = h_j ⊗ Y(r̂_ij) (a tensor product with weights from the edge's
    #: invariants, as in the convolutions) feeds every block irrep of matching (l, parity) through a
    #: linear map. Without it an off-site block sees its own direction only through H(0)/S; the node
    #: pair term h_i ⊗ h_j is the same for every periodic image of an atom pair. Zero-initialised, so
    #: a model without it fine-tunes into it
    edge_messages: bool = False
    #: bond-environment term: each edge (i, j, R) gets m_e = Σ_k w(|r_ik|, |r_jk|, Z_k) Y(r̂_ik) over the
    #: atoms k within ``r_env`` (Å) of i (a three-body feature: where the neighbours of a bond sit
    #: around it), coupled with Y(r̂_ij) and mapped linearly onto the block irreps. Without it an
    #: off-site block learns the angular shape of its environment only through its own H(0) block
    #: (node features of sites with cubic symmetry carry no l ≤ 3 part). Zero-initialised, so a model
    #: without it fine-tunes into it
    bond_env: bool = False
    r_env: float = 4.0
    env_channels: int = 8
    #: zeroth-step density features: the density matrix of H(0)'s own occupied states on the run's k-mesh
    #: (``graph.zeroth_step_density``; the first SCF iteration's output density, which holds the charge
    #: the SCF moves) enters as irreps of every block: a linear map onto the correction (gated like
    #: H(0)'s), its invariants into the edge scalars and its on-site blocks into the node features.
    #: Costs one diagonalisation per k-point of the run's full mesh at prediction. Zero-initialised, so
    #: a model without it fine-tunes into it
    density_features: bool = False
    #: local-potential head (widths σ_m in Å; None: off): the SCF changes only the local Hartree +
    #: exchange-correlation potential, so ΔH is the matrix of one field ΔV(r). Each atom k gets
    #: coefficients c_km (eV, an MLP of its invariant features) of Gaussians exp(−r²/2σ_m²) centred on it
    #: and its images, and ΔH gains Σ_km c_km ⟨φ_i|g_m(k)|φ_j⟩ (``core.potential``: three-centre
    #: integrals by atom-anchored grid quadrature, computed when the graph is built). Zero-initialised,
    #: so a model without it fine-tunes into it. The graph holds the integrals of every (edge, atom)
    #: pair: meant for cells of a few tens of atoms
    local_potential: tuple[float, ...] | None = None
    #: Å, grid step of those integrals
    potential_spacing: float = 0.2
    #: element embeddings from periodic-table descriptors (row, group, electronegativity, radius,
    #: ionisation energy, electron affinity, block; ``model.elements``) through an MLP instead of a free
    #: row per element: chemically close elements start close, and an element absent from training is
    #: embedded from its own properties (not the shared "unknown" row)
    element_descriptors: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Training run: data, split, optimiser, loss weights, budget (minutes), outputs.

    spin_scale (eV): unit of the SOC-part loss. The SOC part of H(0) is already converged to
    ~0.03 μeV in non-magnetic crystals, so its loss is measured in 0.1 meV units to keep the
    learned correction at the μeV level.
    """

    data: str = "dataset.h5"
    out_dir: str = "runs/train"
    #: seeds the weights' initialisation, the sampled k-points and the batch order; also the split
    #: unless split_seed is set
    seed: int = 0
    #: seeds the train/val/test split alone (None: ``seed``), so that replicates of one recipe can
    #: vary the training randomness over the same split
    split_seed: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    held_out_elements: tuple[str, ...] = ()
    epochs: int = 200
    batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.0
    w_real: float = 1.0
    #: how the real-space loss weighs entries: "entries" (every entry of the directed graph alike, so
    #: big cells and off-site pairs, stored in both directions, weigh more) or "metric" (as the H MAE
    #: metric does: each structure alike, on-site entries twice within it)
    real_weighting: str = "entries"
    w_kspace: float = 0.05
    #: band-window loss (first-order band errors of the converged bands in the metrics' window, rigid
    #: shift removed; see model.losses)
    w_window: float = 0.0
    #: eV added on both sides of the band window of that loss (1.0: the window where ghost states are counted)
    window_margin: float = 0.0
    #: what the band-window loss is measured against: "h0" (relative to H(0)'s own window error, so
    #: every structure weighs the same whatever H(0)'s error) or "absolute" (the rms first-order band
    #: error per window state in units of ``model.target_scale``, so that structures weigh by their
    #: band error in eV, as the band MAE metric does; crystals where H(0) is far off then weigh more)
    window_reference: str = "h0"
    #: None: the real-space and k-space losses compare ΔH itself, so the rigid shift μS is learned with
    #: everything else. A number: both compare ΔH after removing each structure's best rigid shift μS
    #: (least squares over its entries, as the metric "H MAE after μS"), and w_shift·|μ|/target_scale
    #: is added, so that the absolute level is learned with this weight of its own
    w_shift: float | None = None
    w_spin: float = 1.0
    spin_scale: float = 1e-4
    k_per_structure: int = 4
    #: fraction of atoms whose element is hidden (embedding 0, "unknown") at each training step, so
    #: that the unknown-element path learns to correct from H(0) features alone (elements never seen)
    element_dropout: float = 0.0
    #: what picks best.pt: "h_mae" (validation H MAE) or "loss" (the weighted training objective on the
    #: validation split, k-space terms included: use it when the k-space terms carry the goal, e.g. bands)
    select_on: str = "h_mae"
    #: > 0: validate and save the exponential moving average of the weights with this decay per
    #: optimiser step (e.g. 0.99, as NequIP and MACE do); 0: the weights themselves
    ema_decay: float = 0.0
    budget_minutes: float = 60.0
    patience: int = 30
    checkpoint_every: int = 1
    threads: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    return obj


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def model_config_from_dict(d: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown model option(s): {', '.join(sorted(bad))}")
    if d.get("r_corr") is not None and not float(d["r_corr"]) > 0:
        raise ValueError(f"r_corr must be null or > 0 Å, not {d['r_corr']!r}")
    if "r_env" in d and not (isinstance(d["r_env"], (int, float)) and not isinstance(d["r_env"], bool) and d["r_env"] > 0):
        raise ValueError(f"r_env must be > 0 Å, not {d['r_env']!r}")
    if "env_channels" in d and not (isinstance(d["env_channels"], int) and not isinstance(d["env_channels"], bool)
                                    and d["env_channels"] >= 1):
        raise ValueError(f"env_channels must be an integer >= 1, not {d['env_channels']!r}")
    if "element_descriptors" in d and not isinstance(d["element_descriptors"], bool):
        raise ValueError(f"element_descriptors must be true or false, not {d['element_descriptors']!r}")
    lp = d.get("local_potential")
    if lp is not None and (not isinstance(lp, (list, tuple)) or not lp
                           or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in lp)):
        raise ValueError(f"local_potential must be null or a list of widths > 0 Å, not {lp!r}")
    if "potential_spacing" in d and not (isinstance(d["potential_spacing"], (int, float))
                                         and 0 < d["potential_spacing"] <= 0.5):
        raise ValueError(f"potential_spacing must lie in (0, 0.5] Å, not {d['potential_spacing']!r}")
    return ModelConfig(**{k: _tuplify(v) for k, v in d.items()})


def train_config_from_dict(d: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(bad))}")
    if d.get("select_on", "h_mae") not in ("h_mae", "loss"):
        raise ValueError(f"select_on must be 'h_mae' or 'loss', not {d['select_on']!r}")
    if d.get("real_weighting", "entries") not in ("entries", "metric"):
        raise ValueError(f"real_weighting must be 'entries' or 'metric', not {d['real_weighting']!r}")
    if d.get("window_reference", "h0") not in ("h0", "absolute"):
        raise ValueError(f"window_reference must be 'h0' or 'absolute', not {d['window_reference']!r}")
    if not 0.0 <= float(d.get("ema_decay", 0.0)) < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), not {d['ema_decay']!r}")
    if d.get("split_seed") is not None and (isinstance(d["split_seed"], bool) or not isinstance(d["split_seed"], int)):
        raise ValueError(f"split_seed must be null or an integer, not {d['split_seed']!r}")
    if d.get("w_shift") is not None and float(d["w_shift"]) < 0:
        raise ValueError(f"w_shift must be null or >= 0, not {d['w_shift']!r}")
    d = dict(d)
    model = model_config_from_dict(d.pop("model", {}) or {})
    return TrainConfig(model=model, **{k: _tuplify(v) for k, v in d.items()})


def to_dict(cfg: Any) -> dict:
    return _to_plain(cfg)


def load_train_config(path: str | Path) -> TrainConfig:
    with open(path) as fh:
        d = yaml.safe_load(fh) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a YAML mapping is expected")
    return train_config_from_dict(d)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
