"""OpenMX's real-spherical-harmonic order and signs, declared as data.

OpenMX orders the orbitals of an atom by l, then multiplicity (zeta), then m, with
p = (x, y, z), d = (3z²−r², x²−y², xy, xz, yz),
f = (5z³−3zr², 5xz²−xr², 5yz²−yr², z(x²−y²), xyz, x³−3xy², 3x²y−y³), all with
positive leading coefficients (no Condon–Shortley phase). As (m, sign) pairs of
the tesseral harmonics T_lm this is the table below; ``tests/test_openmx.py``
proves it on a real run (every s–l overlap block points along Y_l of the bond).
"""

from __future__ import annotations

from nextham_dft.core.sph import OrbitalConvention

OPENMX_CONVENTION = OrbitalConvention(
    "openmx",
    {
        0: ((0, 1),),
        1: ((1, 1), (-1, 1), (0, 1)),
        2: ((0, 1), (2, 1), (-2, 1), (1, 1), (-1, 1)),
        3: ((0, 1), (1, 1), (-1, 1), (2, 1), (-2, 1), (3, 1), (-3, 1)),
    },
)
