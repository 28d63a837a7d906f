"""Which bundled model a command uses when no ``--model`` is named.

The bundled density model (``--model density``) is the more accurate prediction (docs/density-model.md: on the
test split, bands 23.1 against 57.6 meV, H after μS 0.38 against 2.32 meV, 22 against 159 ghost states), but it
builds H on a real-space grid from the pseudopotentials' atomic densities, so it serves only the runs the
self-consistent completion serves (``compat.check_density_run``): UPF files with atomic densities, a functional
``core.hxc`` implements, no collinear spin, non-magnetic. There the commands add one Pulay step over the model's own
Kohn–Sham steps to its prediction (``density_predict.predict_refined``, ``--model refined``: on the test split
bands 4.79 meV, H after μS 0.158 meV, no ghost state; the CLI decides that from the model this returns,
``cli._density_route``). Every other run the bundled correction ensemble (``--model bundled``, v8) predicts, as
before, and the command says why.
"""

from __future__ import annotations

from pathlib import Path

from ..core.system import System
from ..errors import NexthamError
from .compat import check_density_run
from .store import bundled_model_path, read_card


def default_model(system: System) -> tuple[Path, str | None]:
    """(model file, why): the bundled density model when ``system`` suits it (why None), else the bundled
    correction ensemble and, in one line, why the density model does not serve the run."""
    density = bundled_model_path("density")
    try:
        check_density_run(system, read_card(density))
    except NexthamError as why:
        return bundled_model_path("bundled"), str(why)
    return density, None
