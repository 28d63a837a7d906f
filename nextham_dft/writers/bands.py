"""Band-structure outputs: ``bands.npz`` and a PNG plot (E - E_F)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_bands_npz(path: Path, kfrac: np.ndarray, energies: np.ndarray, fermi: float, **extra: np.ndarray) -> None:
    """kpoints_frac (nk, 3), energies_ev (nk, nb) ascending (or (2, nk, nb)), fermi_ev scalar (NaN when
    not computed, e.g. bands near a given energy, which is then ``reference_ev``)."""
    np.savez(path, kpoints_frac=np.asarray(kfrac), energies_ev=np.asarray(energies), fermi_ev=np.float64(fermi), **extra)


def plot_bands(
    path: Path,
    distance: np.ndarray,
    energies: np.ndarray,
    fermi: float,
    ticks: list[tuple[int, str]],
    label: str,
    compare: tuple[np.ndarray, float, str] | None = None,
    window: tuple[float, float] = (-6.0, 6.0),
    title: str = "",
    reference: str = "E$_F$",
    points: bool = False,
) -> None:
    """Bands (E − reference, eV; the reference energy is ``fermi``, labelled ``reference``) along a
    path with labelled high-symmetry points. ``points``: dots, not lines (for eigenvalue sets whose
    band index does not follow one band along the path, e.g. the N nearest an energy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    style = {"ls": "none", "marker": ".", "ms": 3} if points else {}
    e = np.asarray(energies)
    for sp, eig in enumerate(e if e.ndim == 3 else [e]):
        ax.plot(distance, eig - fermi, color="C0" if sp == 0 else "C3", lw=1.2,
                label=(label if sp == 0 else f"{label} (down)"), **style)
    if compare is not None:
        ce, cf, clabel = compare
        for sp, eig in enumerate(ce if np.ndim(ce) == 3 else [ce]):
            ax.plot(distance, eig - cf, color="k", lw=0.9, label=clabel if sp == 0 else None,
                    **({"ls": "none", "marker": "x", "ms": 2.5} if points else {"ls": "--"}))
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="upper right", fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.6, ls=":")
    pos = [distance[i] for i, _ in ticks]
    ax.set_xticks(pos)
    ax.set_xticklabels([l for _, l in ticks])
    for p in pos:
        ax.axvline(p, color="grey", lw=0.5)
    ax.set_xlim(distance[0], distance[-1])
    ax.set_ylim(*window)
    ax.set_ylabel(f"E − {reference} (eV)" if reference.startswith("E") else f"E − ({reference}) (eV)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
