"""Band errors of insulators split into the gap error and the rest, for a model and for H(0).

At the run's k-points, in the metrics' band window: the mean error of the valence bands and of the
conduction bands, their difference (the gap error, meV), and the MAE left after removing each of the two
means (meV). Metals print the shifted band MAE only.

Usage: python scripts/diagnostics/gap_error.py DATA.h5 [--model PATH] [--split val]
"""

from __future__ import annotations

import numpy as np

from diag_common import split_parser, split_systems
from nextham_dft.core.kspace import band_energies
from nextham_dft.evaluation import band_window


def main() -> None:
    ap = split_parser(__doc__)
    a = ap.parse_args()
    print("id     formula   kind | model: shifted MAE, gap error, rest | H(0): the same (meV)")
    for system, hp in split_systems(a.model, a.data, a.split):
        s, k = system.matrices["S"], system.kpoints.frac
        ref = band_energies(system.matrices["H"], s, k)
        fermi = system.fermi_from_bands(ref, system.kpoints.weights)
        lo, hi, insulator = band_window(ref, system.nelec, system.spin_degeneracy, fermi)
        inside = (ref >= lo) & (ref <= hi)
        nocc = int(round(system.nelec / system.spin_degeneracy))
        line = f"{system.meta['id']:6s} {system.formula:9s} {'ins' if insulator else 'met'}"
        for m in (hp, system.matrices["H0"]):
            d = band_energies(m, s, k) - ref
            shifted = 1e3 * np.abs(d[inside] - d[inside].mean()).mean()
            if not insulator:
                line += f" | {shifted:7.1f}"
                continue
            val, con = inside.copy(), inside.copy()
            val[:, nocc:], con[:, :nocc] = False, False
            dv, dc = d[val].mean(), d[con].mean()
            rest = 1e3 * np.abs(np.concatenate([d[val] - dv, d[con] - dc])).mean()
            line += f" | {shifted:7.1f} {1e3 * (dc - dv):8.1f} {rest:6.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
