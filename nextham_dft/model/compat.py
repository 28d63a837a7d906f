"""Is a run within what a model was trained on? Basis family, angular momenta, spin, elements."""

from __future__ import annotations

import numpy as np

from ..core.system import System
from ..errors import BasisMismatchError, NexthamError
from .irreps import BasisLayout


class UnsupportedRunError(NexthamError):
    """The run is outside the model's domain (magnetic, collinear spin, …)."""


def _refuse_magnetic(system: System) -> None:
    """UnsupportedRunError for a spin–orbit run with a starting magnetic moment: the models cover
    non-magnetic crystals only."""
    if system.magmom is not None and system.spin_mode == "noncollinear":
        m = float(np.abs(system.magmom).max(initial=0.0))
        if m > 1e-3:
            raise UnsupportedRunError(f"magnetic run (starting moment {m:g} μB): the model covers non-magnetic crystals only")


def check_run(system: System, card: dict, layout: BasisLayout) -> list[str]:
    """Warnings for a run the model can predict; raises for one it cannot."""
    warnings: list[str] = []
    if "H0" not in system.matrices or "S" not in system.matrices:
        raise UnsupportedRunError("the run has no zeroth-step H(0) and S(R): run the zeroth step first (nextham-dft setup)")
    if system.spin_mode == "collinear":
        raise UnsupportedRunError("nspin 2 (collinear magnetic) runs are not supported by this model")
    _refuse_magnetic(system)
    family = card.get("basis_family", "abacus-nao")
    seen = set(card.get("elements", []))
    files = card.get("orbital_files", {})
    labels = set(card.get("basis_labels", []))
    for b in system.bases:
        if b.family != family:
            raise BasisMismatchError(f"{b.source}: basis family {b.family!r} is not the model's ({family!r})")
        layout.positions(b)  # raises for unsupported l / too many zetas
        if labels and b.label() not in labels:
            raise BasisMismatchError(f"{b.source}: {b.label()} basis is not of the DZP family the model knows "
                                     f"({', '.join(sorted(labels))})")
        if b.element in files and files[b.element].get("sha256") and b.sha256 and files[b.element]["sha256"] != b.sha256:
            raise BasisMismatchError(f"{b.source}: {b.element} orbital file differs from the one the model was trained "
                                     f"with ({files[b.element]['file']})")
        if seen and b.element not in seen:
            warnings.append(f"element {b.element} was not in the training data: prediction from its H(0) features only")
    return warnings


def check_density_run(system: System, card: dict) -> list[str]:
    """Warnings for a run a density model can predict (``model.density_predict``); raises for one it cannot.
    Its H comes from ``core.scf``, so the run must suit the self-consistent completion (pseudopotential
    densities, a functional it implements, no collinear spin) and be non-magnetic; the orbital basis
    may be any (H is built in the run's own), and an element outside training is embedded from its
    periodic-table descriptors."""
    from ..core.scf import completion_problem

    _refuse_magnetic(system)
    problem = completion_problem(system)
    if problem is not None:
        raise problem
    warnings: list[str] = []
    seen = set(card.get("elements", []))
    for el in sorted(set(system.elements) - seen if seen else ()):
        warnings.append(f"element {el} was not in the training data: its embedding comes from its periodic-table "
                        "descriptors")
    known = card.get("pseudopotential_files", {})
    for d in system.atomic_densities or ():
        ref = known.get(d.element, {})
        if ref.get("sha256") and d.sha256 and ref["sha256"] != d.sha256:
            warnings.append(f"{d.source}: {d.element} pseudopotential differs from the one the model was trained with "
                            f"({ref.get('file')})")
    return warnings


def model_run_warnings(system: System, card: dict, model) -> list[str]:
    """``check_density_run`` for a density model, else ``check_run`` with the model's basis layout."""
    from .density_net import is_density_model

    return check_density_run(system, card) if is_density_model(model) else check_run(system, card, model.layout)
