"""Physical constants and unit conversions: the one place in the package.

All canonical quantities are in eV (energies) and Å (lengths); adapters convert
at the file boundary with the constants below (CODATA 2018, as used by ASE and
ABACUS).
"""

from __future__ import annotations

#: Bohr radius in Å.
BOHR_TO_ANG: float = 0.529177210903
ANG_TO_BOHR: float = 1.0 / BOHR_TO_ANG
#: Hartree in eV.
HARTREE_TO_EV: float = 27.211386245988
#: Rydberg in eV.
RY_TO_EV: float = HARTREE_TO_EV / 2.0
EV_TO_RY: float = 1.0 / RY_TO_EV
EV_TO_HARTREE: float = 1.0 / HARTREE_TO_EV
#: Coulomb constant e²/(4πε₀) in eV·Å (Hartree × Bohr).
COULOMB_EV_ANG: float = HARTREE_TO_EV * BOHR_TO_ANG
#: Boltzmann constant in eV/K.
KELVIN_TO_EV: float = 8.617333262e-5
