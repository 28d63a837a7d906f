"""Model files: weights + config + model card, with a checksum verified on load."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from ..errors import NexthamError
from .config import model_config_from_dict, to_dict
from .network import HamiltonianCorrection

PRETRAINED = Path(__file__).with_name("pretrained")


class ModelFileError(NexthamError):
    """A model file is missing, corrupted or of an unknown kind."""


def save_model(path: str | Path, model: HamiltonianCorrection, card: dict) -> None:
    """Write ``path`` (torch) and ``path.json`` (model card with the file's sha256)."""
    path = Path(path)
    buf = io.BytesIO()
    state = {k: v.detach().cpu().to(torch.float32) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"format": "nextham-dft-model/1", "config": to_dict(model.cfg), "state_dict": state}, buf)
    data = buf.getvalue()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    full = {**card, "model_config": to_dict(model.cfg), "sha256": hashlib.sha256(data).hexdigest(),
            "n_parameters": sum(p.numel() for p in model.parameters())}
    card_path = path.with_suffix(".json")
    card_path.with_suffix(".json.tmp").write_text(json.dumps(full, indent=1, default=str))
    card_path.with_suffix(".json.tmp").replace(card_path)


def load_model(path: str | Path) -> tuple[HamiltonianCorrection, dict]:
    """Load a model and its card; the checksum in the card must match the weights file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    data = path.read_bytes()
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card.get("sha256") and card["sha256"] != hashlib.sha256(data).hexdigest():
        raise ModelFileError(f"{path}: checksum does not match its model card (corrupted or replaced file)")
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelFileError(f"{path}: not a nextham-dft model ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != "nextham-dft-model/1":
        raise ModelFileError(f"{path}: not a nextham-dft model file")
    model = HamiltonianCorrection(model_config_from_dict(blob["config"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    model.known_elements = frozenset(card.get("elements", []))
    return model, card


def load_weights_into(model: HamiltonianCorrection, state: dict) -> None:
    """Copy ``state`` into ``model``; only the zero-initialised optional extensions may be missing
    (an older model fine-tunes into them). Anything else that does not fit is a ModelFileError."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise ModelFileError(f"the initial model does not fit this architecture: {str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith(model.optional_prefixes)]
    if missing or unexpected:
        raise ModelFileError("the initial model does not fit this architecture: "
                             + ", ".join((missing + unexpected)[:4]) + (" ..." if len(missing + unexpected) > 4 else ""))


def bundled_model_path() -> Path:
    return PRETRAINED / "model.pt"
