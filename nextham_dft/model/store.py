"""Model files: weights + config + model card, with a checksum verified on load."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from ..errors import NexthamError
from .config import model_config_from_dict, to_dict
from .density_net import DensityConfig, DensityEnsemble, DensityNet, density_members, is_density_model
from .ensemble import EnsembleError, ModelEnsemble, members_of
from .network import HamiltonianCorrection

#: a single network; an ensemble (several networks of one config, corrections averaged); a density
#: network or several of one config, their coefficients averaged (model.density_net)
FORMAT, ENSEMBLE_FORMAT, DENSITY_FORMAT = "nextham-dft-model/1", "nextham-dft-ensemble/1", "nextham-dft-density/1"

PRETRAINED = Path(__file__).with_name("pretrained")


class ModelFileError(NexthamError):
    """A model file is missing, corrupted or of an unknown kind."""


def _float32_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().to(torch.float32) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def save_model(path: str | Path, model: HamiltonianCorrection | ModelEnsemble, card: dict) -> None:
    """Write ``path`` (torch) and ``path.json`` (model card with the file's sha256). An ensemble is
    stored as one config and its members' weights."""
    path = Path(path)
    buf = io.BytesIO()
    if is_density_model(model):
        blob = {"format": DENSITY_FORMAT, "config": model.cfg.to_dict(),
                "members": [_float32_state(m) for m in density_members(model)]}
    elif isinstance(model, ModelEnsemble):
        blob = {"format": ENSEMBLE_FORMAT, "config": to_dict(model.cfg),
                "members": [_float32_state(m) for m in members_of(model)]}
    else:
        blob = {"format": FORMAT, "config": to_dict(model.cfg), "state_dict": _float32_state(model)}
    torch.save(blob, buf)
    data = buf.getvalue()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    density = is_density_model(model)
    full = {**card, "model_config": model.cfg.to_dict() if density else to_dict(model.cfg),
            "sha256": hashlib.sha256(data).hexdigest(), "kind": "density" if density else "correction",
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "n_members": len(density_members(model) if density else members_of(model))}
    card_path = path.with_suffix(".json")
    card_path.with_suffix(".json.tmp").write_text(json.dumps(full, indent=1, default=str))
    card_path.with_suffix(".json.tmp").replace(card_path)


def read_card(path: str | Path) -> dict:
    """The model card beside a model file (``path`` with .json), {} where there is none."""
    card_path = Path(path).with_suffix(".json")
    return json.loads(card_path.read_text()) if card_path.is_file() else {}


def load_model(path: str | Path) -> tuple[HamiltonianCorrection | ModelEnsemble, dict]:
    """Load a model (a single network or an ensemble) and its card; the checksum in the card must
    match the weights file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    data = path.read_bytes()
    card = read_card(path)
    if card.get("sha256") and card["sha256"] != hashlib.sha256(data).hexdigest():
        raise ModelFileError(f"{path}: checksum does not match its model card (corrupted or replaced file)")
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelFileError(f"{path}: not a nextham-dft model ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, ENSEMBLE_FORMAT, DENSITY_FORMAT):
        raise ModelFileError(f"{path}: not a nextham-dft model file")
    if blob["format"] == DENSITY_FORMAT:
        return _density_model(path, blob, card), card
    cfg = model_config_from_dict(blob["config"])
    states = blob["members"] if blob["format"] == ENSEMBLE_FORMAT else [blob["state_dict"]]
    if not states:
        raise ModelFileError(f"{path}: an ensemble file without members")
    nets = []
    for state in states:
        net = HamiltonianCorrection(cfg)
        net.load_state_dict(state)
        nets.append(net)
    model = ModelEnsemble(nets) if blob["format"] == ENSEMBLE_FORMAT else nets[0]
    model.eval()
    model.known_elements = frozenset(card.get("elements", []))
    return model, card


def _density_model(path: Path, blob: dict, card: dict) -> DensityNet | DensityEnsemble:
    try:
        cfg = DensityConfig.from_dict(blob["config"])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    if not blob.get("members"):
        raise ModelFileError(f"{path}: a density model without networks")
    nets = []
    for state in blob["members"]:
        net = DensityNet(cfg)
        net.load_state_dict(state)
        nets.append(net.eval())
    model = nets[0] if len(nets) == 1 else DensityEnsemble(nets)
    model.eval()
    model.known_elements = frozenset(card.get("elements", []))
    return model


def select_member(model: torch.nn.Module, member: int | None, path: str | Path = "the model") -> torch.nn.Module:
    """The network to fine-tune from: ``model`` itself, or its member ``member`` for an ensemble
    (which then must be given: the members are different networks, not one to average)."""
    if not isinstance(model, ModelEnsemble):
        if member not in (None, 0):
            raise ModelFileError(f"{path}: a single network; it has no member {member}")
        return model
    n = len(model.members)
    if member is None or not 0 <= member < n:
        raise ModelFileError(f"{path} is an ensemble of {n} networks: choose the one to fine-tune with --member "
                             f"(0 to {n - 1}); fine-tune each and recombine them with `nextham-dft ensemble`")
    return model.members[member]


def load_weights_into(model: HamiltonianCorrection, source: torch.nn.Module | dict) -> None:
    """Copy the weights of ``source`` (a network or its state dict) into ``model``; only the
    zero-initialised optional extensions may be missing (an older model fine-tunes into them).
    Anything else that does not fit, or an ensemble as the source, is a ModelFileError."""
    if isinstance(source, ModelEnsemble):
        raise ModelFileError(f"an ensemble of {len(source.members)} networks cannot seed one network: fine-tune "
                             "one of its members (train --member K)")
    state = source if isinstance(source, dict) else source.state_dict()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise ModelFileError(f"the initial model does not fit this architecture: {str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith(model.optional_prefixes)]
    if missing or unexpected:
        raise ModelFileError("the initial model does not fit this architecture: "
                             + ", ".join((missing + unexpected)[:4]) + (" ..." if len(missing + unexpected) > 4 else ""))


#: the bundled models by name: the default, "fast", a single network (half the prediction time of the
#: default ensemble of two), and "local", a single network with the local-potential head (scripts/
#: local_potential_recipe: half the H error of the default, better bands on most crystals, worse on SrTiO3), and
#: "density", a density model (scripts/density_recipe: H[ρ_atoms + Δρ_pred] through core.scf; needs the UPF files)
BUNDLED = {"bundled": PRETRAINED / "model.pt", "fast": PRETRAINED / "fast" / "model.pt",
           "local": PRETRAINED / "local" / "model.pt", "density": PRETRAINED / "density" / "model.pt"}


def bundled_model_path(name: str = "bundled") -> Path:
    return BUNDLED[name]


def resolve_model_path(name: str | Path | None) -> Path:
    """A model file from a ``--model`` value: None or "bundled" (the bundled correction ensemble; the commands on a
    run choose their default with ``model.default`` instead), "fast"
    (the bundled single network), "local" (the bundled local-potential network), "density" (the bundled
    density model), else a path."""
    if name is None:
        return BUNDLED["bundled"]
    return BUNDLED.get(str(name), Path(name))


def combine_models(paths: list[str | Path]) -> tuple[ModelEnsemble | DensityEnsemble, dict]:
    """An ensemble of trained models (each a single network of one architecture, trained on the same
    split; density models of one configuration average their coefficients) and its card: the first member's card, with each member's file, checksum and best epoch.
    Members trained on different splits would let one member have seen another's test crystals, so
    they are refused, as are members of different architectures."""
    if len(paths) < 2:
        raise ModelFileError("an ensemble needs at least two model files")
    nets, cards = [], []
    for p in paths:
        net, card = load_model(p)
        if isinstance(net, (ModelEnsemble, DensityEnsemble)):
            raise ModelFileError(f"{p}: already an ensemble; combine its member files instead")
        nets.append(net)
        cards.append(card)
    for p, card in zip(paths[1:], cards[1:]):
        if card.get("split") != cards[0].get("split"):
            raise ModelFileError(f"{p}: trained on another train/val/test split than {paths[0]} "
                                 "(train the members with one split_seed)")
    kinds = {is_density_model(n) for n in nets}
    if len(kinds) > 1:
        raise ModelFileError("density models and correction networks cannot be averaged together")
    if kinds == {True}:  # density networks: their coefficients are averaged (one basis, grid and graph)
        for p, n in zip(paths[1:], nets[1:]):
            if n.cfg != nets[0].cfg:
                raise ModelFileError(f"{p}: another density-model configuration than {paths[0]}")
        ens = DensityEnsemble(nets)
    else:
        try:
            ens = ModelEnsemble(nets)
        except EnsembleError as exc:  # another architecture
            raise ModelFileError(f"{paths[0]} and the others: {exc}") from None
    ens.known_elements = frozenset().union(*(n.known_elements for n in nets))
    card = {k: v for k, v in cards[0].items() if k not in ("sha256", "n_parameters", "model_config", "epoch", "val")}
    card["elements"] = sorted(ens.known_elements)
    card["members"] = [{"file": str(p), "sha256": c.get("sha256"), "epoch": c.get("epoch"), "val": c.get("val"),
                        "train_config": c.get("train_config")} for p, c in zip(paths, cards)]
    return ens, card
