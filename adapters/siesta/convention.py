"""SIESTA's real-spherical-harmonic order and signs, declared as data.

SIESTA (and sisl, which keeps its order) lists the 2l+1 functions of a shell as
m = −l, …, l of the tesseral harmonics with the Condon–Shortley sign (−1)^m:
p = (−y, z, −x), d = (xy, −yz, 3z²−r², −xz, x²−y²), … Shells come in the order of the
basis definition (which need not be sorted by l); the adapter reorders them.
``tests/test_siesta.py`` proves the table on real runs (every s–l overlap block points
along Y_l of the bond).
"""

from __future__ import annotations

from nextham_dft.core.sph import OrbitalConvention

SIESTA_CONVENTION = OrbitalConvention(
    "siesta",
    {l: tuple((m, (-1) ** abs(m)) for m in range(-l, l + 1)) for l in range(0, 5)},
)
