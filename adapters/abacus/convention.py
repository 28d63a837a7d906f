"""ABACUS's real-spherical-harmonic order and signs, declared as data.

ABACUS orders the 2l+1 functions of a shell as m = 0, +1, -1, +2, -2, … of the
tesseral harmonics T_lm with the Condon–Shortley sign (-1)^m on odd m
(``Ylm::rl_sph_harm``): p = (z, -x, -y), d = (z², -xz, -yz, x²-y², xy), …
The rotation test on ABACUS's own rotated runs proves this table (l ≤ 3).
"""

from __future__ import annotations

from nextham_dft.core.sph import OrbitalConvention

ABACUS_CONVENTION = OrbitalConvention(
    "abacus",
    {
        0: ((0, 1),),
        1: ((0, 1), (1, -1), (-1, -1)),
        2: ((0, 1), (1, -1), (-1, -1), (2, 1), (-2, 1)),
        3: ((0, 1), (1, -1), (-1, -1), (2, 1), (-2, 1), (3, -1), (-3, -1)),
        4: ((0, 1), (1, -1), (-1, -1), (2, 1), (-2, 1), (3, -1), (-3, -1), (4, 1), (-4, 1)),
    },
)
