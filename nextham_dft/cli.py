"""Command-line interface: ``nextham-dft info | bands | dataset build``.

Bad input ends with one line on stderr and exit status 2 (1 for an internal
error, with ``--debug`` showing the traceback); no traceback for users.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click
import numpy as np

from . import __version__
from .core.scf import ScfSettings
from .errors import NexthamError

SOURCES = {"h0": "H0", "scf": "H", "predicted": "HP", "completed": "HC"}


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"nextham-dft: error: {msg}", err=True)
    sys.exit(code)


def friendly_errors(fn):
    """Turn bad-input errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except NexthamError as exc:
            if debug:
                traceback.print_exc()
            _fail(str(exc))
        except (KeyError, ValueError, OSError, MemoryError) as exc:
            if debug:
                traceback.print_exc()
            _fail(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if debug:
                traceback.print_exc()
            _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it", 1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nextham-dft")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def main(debug: bool) -> None:
    """Converged Kohn–Sham Hamiltonians from the zeroth step of NAO DFT codes."""


def _read(run_dir: str, zeroth: str | None, converged: str | None, orbital_dir: str | None):
    from .registry import adapter_for

    adapter = adapter_for(run_dir)
    return adapter.read_run(Path(run_dir), zeroth=zeroth, converged=converged, orbital_dir=orbital_dir)


_run_options = [
    click.option("--zeroth", default=None, help="Name of the zeroth-step folder (e.g. OUT.h0) when ambiguous."),
    click.option("--converged", default=None, help="Name of the converged-SCF folder when ambiguous."),
    click.option("--orbital-dir", type=click.Path(file_okay=False), default=None,
                 help="Folder with the .orb files (default: INPUT's orbital_dir, then the run folder)."),
]


def run_options(fn):
    for opt in reversed(_run_options):
        fn = opt(fn)
    return fn


# ---------------------------------------------------------------------------- info


def describe(system) -> dict:
    """A JSON-ready summary of a System."""
    basis = {}
    for b in system.bases:
        basis[b.element] = {"shells": b.label(), "orbitals": b.norb, "lmax": b.lmax, "rcut_ang": round(b.rcut, 4),
                            "file": b.source}
    mats = {}
    for name, m in system.matrices.items():
        mats[name] = {"blocks": m.n_edges, "R_vectors": int(len(m.unique_R())), "spin_layout": m.spin}
    meta = system.meta
    return {
        "code": meta.get("code"),
        "file_generation": meta.get("generation"),
        "code_version": meta.get("version") or None,
        "formula": system.formula,
        "n_atoms": system.n_atoms,
        "lattice_ang": np.round(system.lattice, 6).tolist(),
        "elements": system.elements,
        "basis": basis,
        "spin_mode": system.spin_mode,
        "soc": system.soc,
        "matrix_dimension": system.dim,
        "nelec": system.nelec,
        "kmesh": list(system.kpoints.mesh) if system.kpoints is not None and system.kpoints.mesh else None,
        "n_kpoints": len(system.kpoints.frac) if system.kpoints is not None else 0,
        "matrices": mats,
        "found": {
            "zeroth_step": meta.get("zeroth_step"),
            "converged_step": meta.get("converged_step"),
            "summary": "both" if ("H0" in system.matrices and "H" in system.matrices)
            else "zeroth step" if "H0" in system.matrices else "converged" if "H" in system.matrices else "overlap only",
        },
        "steps": meta.get("steps", []),
        "gamma_folded": bool(meta.get("gamma_folded", False)),
        "pseudopotentials": {d.element: {"file": d.source, "functional": d.functional, "z_valence": d.z_valence,
                                         "core_correction": bool(np.any(d.core))}
                             for d in system.atomic_densities},
        "scf_completion": _completion_readiness(system),
    }


def _completion_readiness(system) -> str:
    """'ready' when ``predict --scf`` can run on this system, else why not (one line)."""
    from .core.scf import completion_problem

    problem = completion_problem(system)
    return "ready" if problem is None else str(problem)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@run_options
@friendly_errors
def info(run_dir, as_json, zeroth, converged, orbital_dir):
    """Summarise a DFT run: code, file generation, structure, basis, spin, matrices, steps found."""
    system = _read(run_dir, zeroth, converged, orbital_dir)
    d = describe(system)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"code            {d['code']}  ({d['file_generation']}{', ' + d['code_version'] if d['code_version'] else ''})")
    click.echo(f"formula         {d['formula']}  ({d['n_atoms']} atoms)")
    for el, b in d["basis"].items():
        click.echo(f"basis {el:<9} {b['shells']:<10} {b['orbitals']} orbitals, rcut {b['rcut_ang']:.3f} Å  [{b['file']}]")
    click.echo(f"spin            {d['spin_mode']}{' + SOC' if d['soc'] else ''}")
    click.echo(f"dimension       {d['matrix_dimension']}")
    click.echo(f"electrons       {d['nelec']}")
    click.echo(f"k-points        {d['n_kpoints']}" + (f" (mesh {'×'.join(map(str, d['kmesh']))})" if d["kmesh"] else ""))
    for name, m in d["matrices"].items():
        click.echo(f"matrix {name:<8} {m['blocks']} atom-pair blocks, {m['R_vectors']} R vectors")
    click.echo(f"found           {d['found']['summary']} (zeroth: {d['found']['zeroth_step']}, converged: {d['found']['converged_step']})")
    click.echo(f"scf completion  {d['scf_completion']}  (predict --scf)")
    for s in d["steps"]:
        click.echo(f"  step {s['name']:<12} {s['kind']:<12} {s['files']}")
    if d["gamma_folded"]:
        click.echo("note            Γ-only run: periodic images are folded into R = 0 (Γ bands only)")


# ---------------------------------------------------------------------------- bands


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--source", type=click.Choice(sorted(SOURCES)), default="scf", show_default=True,
              help="Which Hamiltonian: the zeroth step (h0), the converged SCF (scf), the model's (predicted) or "
                   "the model's completed to self-consistency here (completed, as predict --scf).")
@click.option("--kpoints", "kmode", type=click.Choice(["path", "run"]), default="path", show_default=True,
              help="A high-symmetry path (seekpath) or the run's own k-points.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="New output folder.")
@click.option("--compare", type=click.Choice(sorted(SOURCES)), default=None, help="Overlay a second source on the plot.")
@click.option("--density", type=float, default=40.0, show_default=True, help="Path points per 1/Å.")
@click.option("--force", is_flag=True, help="Replace a previous nextham-dft output folder.")
@click.option("--model", "model_path", default=None, help="Model for --source/--compare predicted (default: as predict's).")
@click.option("--near", "near", type=float, default=None,
              help="Big cells: only the --nbands bands closest to this energy (eV, absolute), by sparse shift-invert; "
                   "no Fermi level is computed and the plot is drawn relative to this energy.")
@click.option("--nbands", type=click.IntRange(1), default=20, show_default=True, help="Bands per k-point with --near.")
@run_options
@friendly_errors
def bands(run_dir, source, kmode, out_dir, compare, density, force, model_path, near, nbands, zeroth, converged,
          orbital_dir):
    """Band energies (bands.npz) and, along a path, a plot (bands.png)."""
    from .core.kpath import high_symmetry_path
    from .core.kspace import bands_near
    from .writers.bands import plot_bands, write_bands_npz
    from .writers.output import output_dir

    system = _read(run_dir, zeroth, converged, orbital_dir)
    tag = _source_matrix(system, source, model_path)
    if compare:
        _source_matrix(system, compare, model_path)
    if "S" not in system.matrices:
        raise NexthamError(f"{run_dir}: no overlap S(R) found; bands need it")
    if near is None:
        if why := _dense_shortfall(system.dim):
            raise NexthamError(f"{run_dir}: {why}: use --near ENERGY --nbands N (sparse, near an energy)")
        fermi = _fermi(system, tag)

    def energies(t: str, k: np.ndarray) -> np.ndarray:
        if near is None:
            return system.bands(t, k)
        return bands_near(system.hamiltonian(t), system.matrices["S"], k, near, nbands)

    ref = near if near is not None else fermi
    extra = {"reference_ev": np.float64(near)} if near is not None else {}
    with output_dir(out_dir, force) as tmp:
        if kmode == "run":
            if system.kpoints is None:
                raise NexthamError(f"{run_dir}: the run's k-points are unknown (no OUT.*/kpoints nor KPT mesh)")
            k = system.kpoints.frac
            e = energies(tag, k)
            write_bands_npz(tmp / "bands.npz", k, e, np.nan if near is not None else fermi,
                            kweights=system.kpoints.weights, **extra)
        else:
            from pymatgen.core.periodic_table import Element

            numbers = [Element(el).Z for el in system.elements]
            path = high_symmetry_path(system.lattice, system.frac_positions, numbers, density)
            e = energies(tag, path.frac)
            write_bands_npz(tmp / "bands.npz", path.frac, e, np.nan if near is not None else fermi,
                            distance=path.distance, tick_index=np.array([i for i, _ in path.ticks]),
                            tick_label=np.array([l for _, l in path.ticks]), **extra)
            cmp = None
            if compare:
                ctag = SOURCES[compare]
                cmp = (energies(ctag, path.frac), ref if near is not None else _fermi(system, ctag), f"{compare}")
            window = (-6.0, 6.0)
            if near is not None:  # the computed bands only, a little margin around them
                lo, hi = float(np.min(e)) - near, float(np.max(e)) - near
                window = (max(lo - 0.2, -6.0), min(hi + 0.2, 6.0))
            plot_bands(tmp / "bands.png", path.distance, e, ref, path.ticks, source, cmp, window=window,
                       title=f"{system.formula} ({system.spin_mode}{' + SOC' if system.soc else ''})",
                       reference="E$_F$" if near is None else f"{near:.3f} eV", points=near is not None)
    what = f"E_F = {fermi:.4f} eV" if near is None else f"{np.shape(e)[-1]} bands nearest {near:.4f} eV"
    click.echo(f"wrote {out_dir}/bands.npz" + ("" if kmode == "run" else f" and {out_dir}/bands.png") + f"  ({what})")


def _dense_shortfall(dim: int) -> str | None:
    """Why dense diagonalisation of one k-point of dimension ``dim`` cannot fit in the free memory;
    None when it can (or the free memory is unknown: not Linux)."""
    import os

    need = 4.0 * dim * dim * 16  # H(k), S(k), the eigenvectors and LAPACK's work, complex128
    try:
        avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
    if need <= avail:
        return None
    return (f"dense bands of dimension {dim} need {need / 1024**3:.1f} GiB per k-point and "
            f"{avail / 1024**3:.1f} GiB is free")


def _fermi(system, tag: str) -> float:
    """Fermi level (eV) of Hamiltonian ``tag`` on the run's k-mesh with its smearing."""
    if system.kpoints is None:
        raise NexthamError("cannot place the Fermi level: the run's k-points are unknown")
    e = system.bands(tag, system.kpoints.frac)
    return system.fermi_from_bands(e, system.kpoints.weights)


# ---------------------------------------------------------------------------- dataset


@main.group()
def dataset() -> None:
    """Build training files."""


@dataset.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="New HDF5 file.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--require-both/--allow-partial", default=True, show_default=True,
              help="Keep only structures with both the zeroth step and the converged H.")
@click.option("--select", "select", multiple=True, help="Only these structure ids of a dataset.h5 (repeatable).")
@friendly_errors
def dataset_build(sources, output, force, require_both, select):
    """Convert run directories and abacus-dojo dataset.h5 files into the training format."""
    import os
    import tempfile

    import h5py
    from tqdm import tqdm

    from .dataset import write_system
    from .errors import OutputExistsError
    from .registry import adapter_for

    out = Path(output)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists: use --force to replace it")
    jobs: list[tuple[str, object]] = []
    for src in sources:
        p = Path(src)
        if p.is_file() and p.suffix in (".h5", ".hdf5"):
            from .adapters.abacus.dojo_h5 import is_dojo_dataset, structure_ids

            if not is_dojo_dataset(p):
                raise NexthamError(f"{p}: not an abacus-dojo dataset.h5 (no STRU attribute / S group)")
            ids = structure_ids(p)
            missing = sorted(set(select) - set(ids))
            if missing:
                raise NexthamError(f"{p}: no structure {', '.join(missing)}")
            jobs += [(f"{p.stem}:{sid}", (p, sid)) for sid in ids if not select or sid in select]
        else:
            adapter_for(p)
            jobs.append((p.name, p))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    n = 0
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["nextham_dft_version"] = __version__
            for name, job in tqdm(jobs, desc="dataset", unit="structure", file=sys.stderr):
                if isinstance(job, tuple):
                    from .adapters.abacus.dojo_h5 import read_structure

                    system = read_structure(*job)
                    sid = job[1]
                else:
                    system = _read(str(job), None, None, None)
                    sid = Path(str(job)).name
                if system.meta.get("gamma_folded"):
                    tqdm.write(f"warning {name}: Γ-only run, periodic images are folded into R = 0 (blocks do not "
                               f"belong to single bonds); use a k-mesh run for training", file=sys.stderr)
                if require_both and not ("H0" in system.matrices and "H" in system.matrices):
                    tqdm.write(f"skip {name}: needs both the zeroth step and the converged H", file=sys.stderr)
                    continue
                base, k = sid, 1
                while sid in f:
                    k += 1
                    sid = f"{base}_{k}"
                write_system(f.create_group(sid), system)
                n += 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    click.echo(f"wrote {n} structures to {out}")


# ---------------------------------------------------------------------------- model commands


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NexthamError("--device cuda requested but no CUDA device is available")
    return name


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--init", "init", default=None,
              help="Fine-tune from this model file, or a bundled model: 'fast' (one network) or 'bundled' (with --member).")
@click.option("--member", type=int, default=None,
              help="With an ensemble as --init: which of its networks to fine-tune (0, 1, ...).")
@click.option("--no-resume", is_flag=True, help="Start over even if out_dir holds a checkpoint.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@friendly_errors
def train(config, init, member, no_resume, device):
    """Train (or fine-tune) a model from a YAML config (see docs/training.md).

    Multi-GPU / multi-node: torchrun --nproc_per_node N -m nextham_dft.model.train CONFIG.yaml
    """
    from .model.config import load_train_config
    from .model.store import resolve_model_path
    from .model.train import train as run_train

    cfg = load_train_config(config)
    if init is not None:
        init = str(resolve_model_path(init))
    best = run_train(cfg, init=init, resume=not no_resume, device=_device(device), init_member=member)
    click.echo(f"best model: {best} (log: {cfg.out_dir}/log.csv)")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="New model file (and its .json card).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@friendly_errors
def ensemble(models, output, force):
    """Combine trained models (same architecture, same split; e.g. two seeds) into one model whose
    correction (density models: density coefficients) is their average. Prediction then costs one
    forward pass per member."""
    from .model.store import combine_models, save_model

    out = Path(output)
    if out.exists() and not force:
        raise NexthamError(f"{out} exists: choose a new file or give --force")
    model, card = combine_models(list(models))
    card["name"] = card.get("name") or f"ensemble of {len(models)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, model, card)
    click.echo(f"wrote {out} and {out.with_suffix('.json')}: {len(models)} members, "
               f"{sum(p.numel() for p in model.parameters())} parameters")


def _load_model(model_path: str | None):
    from .model.store import load_model, resolve_model_path

    return load_model(resolve_model_path(model_path))


def _density_route(model_path: str | None, model) -> str | None:
    """How a command predicts with ``model`` (``model.density_predict.ROUTES``): "refined" (the prediction and one
    Pulay step) for ``--model refined`` and by default where the bundled density model serves the run
    (``model.default``), "select" for ``--model select``, "density" (the network alone) for ``--model density`` or a
    density model's file; None for a correction model."""
    from .model.density_net import is_density_model
    from .model.density_predict import NAMED_ROUTES

    if not is_density_model(model):
        return None
    if model_path in NAMED_ROUTES:
        return model_path
    return "refined" if model_path is None else "density"


def _model_file(model_path: str | None) -> str | None:
    """The model a ``--model`` value loads: the bundled density model for a route's name, else the value itself."""
    from .model.density_predict import NAMED_ROUTES

    return "density" if model_path in NAMED_ROUTES else model_path


def _routed(model_path: str | None, model, card: dict) -> tuple[str | None, dict]:
    """(the density route of ``model`` for ``model_path`` (:func:`_density_route`), ``card`` with the route in its
    name)."""
    from .model.density_predict import route_name

    route = _density_route(model_path, model)
    return route, ({**card, "name": route_name(route, card.get("name"))} if route else card)


def _route_hamiltonian(route: str | None, model, system, device: str):
    """H (eV) of ``system`` by ``route`` (a density route) or, for a correction model (None), its prediction."""
    from .model.density_predict import ROUTES
    from .model.predict import predict_hamiltonian

    return ROUTES[route](model, system, device).hamiltonian if route else predict_hamiltonian(model, system, device)


def _load_model_for(system, model_path: str | None) -> tuple:
    """(model, card, warnings) for a command on ``system``: the named model, or with none named the default one
    (``model.default``: the density model where the run suits it, else the bundled ensemble, with a note), and
    the warnings about the run it predicts (``model.compat``), each echoed to stderr."""
    from .model.compat import model_run_warnings
    from .model.default import default_model
    from .model.store import load_model

    why = None
    if model_path is None:
        path, why = default_model(system)
        model, card = load_model(path)
    else:
        model, card = _load_model(model_path)
    try:
        warnings = model_run_warnings(system, card, model)
    except NexthamError as refusal:  # the fallback refuses too: one line that says both, when they differ
        if not why or why in str(refusal):
            raise
        message = f"{refusal} (and the default density model does not serve it: {why})"
        try:
            both = type(refusal)(message)
        except TypeError:
            both = NexthamError(message)
        raise both from None
    if why:
        warnings.insert(0, f"the default density model does not serve this run ({why}); the bundled correction "
                           "ensemble (v8) predicts instead")
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    return model, card, warnings


@main.command("eval")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("data", type=click.Path(exists=True))
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="Which structures of a training file (the split is read from the model card).")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the table as JSON here.")
@click.option("--device", default="auto", show_default=True)
@friendly_errors
def eval_cmd(model_path, data, split, json_out, device):
    """Accuracy of MODEL on DATA (a training file or a run directory), beside the H(0) baseline. MODEL 'refined' or
    'select' evaluates the bundled density model by that route (as predict --model does; 'refined' is predict's
    default where the density model serves)."""
    from .dataset import iter_dataset, list_ids
    from .evaluation import evaluate, summarise

    model, card = _load_model(None if model_path == "bundled" else _model_file(model_path))
    route, card = _routed(model_path, model, card)
    dev = _device(device)
    p = Path(data)
    if p.is_dir():
        systems = [_read(data, None, None, None)]
    else:
        ids = list_ids(p)
        if split != "all":
            chosen = card.get("split", {}).get(split)
            if not chosen:
                raise NexthamError(f"the model card has no '{split}' split; use --split all")
            ids = [i for i in ids if i in set(chosen)]
            if not ids:
                raise NexthamError(f"{data}: holds none of the {len(chosen)} structures of the model's "
                                   f"'{split}' split; use --split all")
        systems = list(iter_dataset(p, ids=ids))
    rows = []
    for s in systems:
        if "H" not in s.matrices:
            raise NexthamError(f"{s.meta.get('id', data)}: no converged H to compare with")
        rows.append({"id": s.meta.get("id", Path(data).name), "formula": s.formula, "spin": s.spin_mode,
                     **evaluate(s, _route_hamiltonian(route, model, s, dev))})
    summ = summarise(rows)
    keys = ["h_mae_mev", "h_mae_onsite_mev", "h_mae_offsite_mev", "h_mae_lt3A_mev", "h_mae_3to6A_mev",
            "h_mae_ge6A_mev", "h_mae_shifted_mev", "soc_mae_uev",
            "band_mae_mev", "band_mae_shifted_mev", "ghost_states", "far_states", "farthest_state_mev"]
    click.echo(f"{len(rows)} structures ({split})")
    click.echo(f"{'metric':<28}{'predicted':>12}{'H(0)':>12}")
    keys += ["h_mae_median_mev", "band_mae_shifted_median_mev"]
    for k in keys:
        if k in summ["predicted"]:
            click.echo(f"{k:<28}{summ['predicted'][k]:12.4f}{summ['h0'][k]:12.4f}")
    if "structures_better_than_h0_bands" in summ["predicted"]:
        click.echo(f"band MAE (shift removed) better than H(0) on {summ['predicted']['structures_better_than_h0_bands']:.0f}"
                   f" of {len(rows)} structures")
    if summ["predicted"].get("h_mae_shifted_mev", 0) >= summ["h0"].get("h_mae_shifted_mev", 1):
        click.echo("WARNING: the model does not beat H(0) on this data (it may only reproduce its input)", err=True)
    if json_out:
        Path(json_out).write_text(json.dumps({"summary": summ, "structures": rows, "model": card.get("name", model_path)},
                                             indent=1))


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(), required=True, help="New output folder.")
@click.option("--model", "model_path", default=None,
              help="Model file, or 'density': the bundled density model, H of a predicted density (needs the UPF "
                   "files; about two SCF iterations' time), 'krylov': no network, the density of the first step and "
                   "two probe steps (needs the UPF files), 'refined': the density model's prediction and one Pulay "
                   "step over the Kohn–Sham steps it took (one diagonalisation more than 'density'), 'select': the "
                   "density model's prediction or the Krylov secant, whichever has the smaller residual, "
                   "'bundled': the bundled correction ensemble (v8), "
                   "'fast': its single network, half the time, 'local': the bundled local-potential network "
                   "(default: 'refined' where the run suits the density model, else 'bundled', with a warning "
                   "saying why).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto (CUDA when available).")
@click.option("--force", is_flag=True, help="Replace a previous nextham-dft output folder.")
@click.option("--no-native", is_flag=True,
              help="Skip the DFT code's own matrix files (abacus/): for big cells their text runs to gigabytes.")
@click.option("--scf", "scf", is_flag=True,
              help="Finish the SCF here, from the prediction: H[ρ] = H(0) + <φ|ΔV_Hxc[ρ]|φ> to self-consistency "
                   "(needs the run's pseudopotential files; DFT accuracy at the cost of a few iterations).")
@click.option("--scf-tol", type=float, default=ScfSettings.tol, show_default=True,
              help="--scf: stop when ∫|ρ_out − ρ_in| per electron falls below this.")
@click.option("--scf-spacing", type=float, default=ScfSettings.spacing, show_default=True,
              help="--scf: grid step (Å, at most).")
@click.option("--scf-max-iter", type=int, default=ScfSettings.max_iter, show_default=True,
              help="--scf: iterations at most.")
@click.option("--scf-steps", type=click.IntRange(min=1), default=None,
              help="Exactly this many Kohn–Sham steps of the completion after the prediction, no convergence test "
                   "(implies --scf). From the default prediction, 2 steps gave the test split's bands within 1.6 meV on "
                   "average (docs/density-model.md).")
@click.option("--scf-from", type=click.Choice(["prediction", "atoms"]), default="prediction", show_default=True,
              help="--scf: start from the network's prediction, or from the atoms' density without any model (any "
                   "basis and element: the completion needs no training; implies --scf).")
@run_options
@friendly_errors
def predict(run_dir, out_dir, model_path, device, force, no_native, scf, scf_tol, scf_spacing, scf_max_iter, scf_steps,
            scf_from,
            zeroth, converged, orbital_dir):
    """Predict the converged H from a run's zeroth step: hamiltonian.h5, abacus/ matrices, report.json."""
    import time

    import h5py
    import torch

    from .dataset import write_system
    from .evaluation import evaluate
    from .model.density_predict import ROUTES, predict_krylov
    from .model.predict import hamiltonian_from, predict_correction_and_spread
    from .registry import adapter_for
    from .writers.output import output_dir

    timings = {}
    t = time.perf_counter()
    adapter = adapter_for(run_dir)
    system = adapter.read_run(Path(run_dir), zeroth=zeroth, converged=converged, orbital_dir=orbital_dir)
    timings["read_s"] = time.perf_counter() - t
    scf = scf or scf_from == "atoms" or scf_steps is not None  # --scf-from atoms and --scf-steps imply --scf
    without_model = scf_from == "atoms"
    card: dict = {"name": None, "sha256": None}
    warnings: list[str] = []
    spread = None
    density = False  # a density model (model.density_predict) rather than a correction network
    krylov = model_path == "krylov" and not without_model  # the network-free Krylov secant (core.krylov)
    if without_model:  # the completion from the atoms' density: no network, no basis check
        h_pred = None
    elif krylov:  # model.density_predict.predict_krylov checks the run as a density model's
        card = {"name": "krylov-secant (no network)", "sha256": None}
        density = True
    else:
        t = time.perf_counter()
        model, card, warnings = _load_model_for(system, _model_file(model_path))
        timings["load_model_s"] = time.perf_counter() - t
        route, card = _routed(model_path, model, card)
        density = route is not None
    dev = _device(device)
    if not without_model:
        t = time.perf_counter()
        if krylov:  # no network: the secant of the first step and two probes, and its H[ρ]
            dens_pred = predict_krylov(system, scf_spacing)
            h_pred = dens_pred.hamiltonian
            timings.update(dens_pred.timings)
            warnings.append(KRYLOV_WARNING)
            click.echo(f"warning: {warnings[-1]}", err=True)
        elif density:  # H[ρ_atoms + Δρ_pred]: one evaluation of core.scf's H[ρ]
            dens_pred = ROUTES[route](model, system, dev)
            h_pred = dens_pred.hamiltonian
            if dens_pred.probe is not None and not dens_pred.probe["network_used"]:
                warnings.append(f"the probe step's inputs are further apart (ratio {dens_pred.probe['input_ratio']:.2f}) "
                                f"than in any training crystal ({dens_pred.probe['input_ratio_max']:.2f}): the network "
                                "would extrapolate, so H is that of the secant density, without its correction")
                click.echo(f"warning: {warnings[-1]}", err=True)
            timings.update(dens_pred.timings)
        else:
            delta, spread = predict_correction_and_spread(model, system, dev, torch.float32)
            h_pred = hamiltonian_from(system, delta)
            del delta
        timings["predict_s"] = time.perf_counter() - t
    scf_report = None
    if scf:
        settings = (ScfSettings(spacing=scf_spacing, tol=scf_tol, max_iter=scf_max_iter) if scf_steps is None else
                    ScfSettings(spacing=scf_spacing, tol=0.0, max_iter=scf_steps))  # steps: no convergence test
        if density and dens_pred.consistency.spacing == settings.spacing:  # from the predicted density itself
            h_pred, scf_report = _complete_scf(system, h_pred, settings, "predicted density", warnings,
                                               start_density=dens_pred.density, consistency=dens_pred.consistency,
                                               prior=dens_pred.steps, start_hamiltonian=dens_pred.hamiltonian,
                                               start_output=dens_pred.output)
        else:
            h_pred, scf_report = _complete_scf(system, h_pred, settings, scf_from, warnings)
        timings["scf_s"] = scf_report["seconds"]
    predicted = _with_prediction(system, h_pred)
    report = {"model": card.get("name", str(model_path)), "model_sha256": card.get("sha256"), "device": dev,
              "run_dir": str(run_dir), "warnings": warnings, "timings": timings}
    if scf_report is not None:
        report["scf"] = scf_report
    if density and dens_pred.probe is not None:  # what the probe step measured
        report["probe"] = dens_pred.probe
    if spread:  # an ensemble: how far its networks disagree on this run
        report["ensemble"] = spread
    if "H" in system.matrices:
        if why := _dense_shortfall(system.dim):
            warnings.append(f"the run holds a converged SCF, but {why}: not compared")
            click.echo(f"warning: {warnings[-1]}", err=True)
        else:
            report["eval"] = evaluate(system, h_pred)
    with output_dir(out_dir, force) as tmp:
        t = time.perf_counter()
        with h5py.File(tmp / "hamiltonian.h5", "w") as f:
            write_system(f.create_group(system.meta.get("id", Path(run_dir).name) or "run"), predicted)
        timings["write_h5_s"] = time.perf_counter() - t
        native = None
        if not no_native and hasattr(adapter, "write_prediction"):
            t1 = time.perf_counter()
            native = adapter.write_prediction(tmp, predicted)
            timings["write_native_s"] = time.perf_counter() - t1
        timings["write_s"] = time.perf_counter() - t
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
    stage_note = "no network" if without_model else f"predict {timings['predict_s']:.2f} s on {dev}"
    click.echo(f"wrote {out_dir}/hamiltonian.h5, {f'{out_dir}/{native}, ' if native else ''}{out_dir}/report.json "
               f"({stage_note}"
               + (f"; SCF completion {scf_report['iterations']} iterations, {scf_report['seconds']:.1f} s" if scf_report else "")
               + ")")
    if "ensemble" in report:
        en = report["ensemble"]
        click.echo(f"ensemble of {en['members']} networks: they disagree by {en['spread_mean_mev']:.3f} meV per H entry "
                   f"on average, {en['spread_max_mev']:.1f} meV at most")
    if "eval" in report:
        e = report["eval"]
        click.echo(f"vs converged SCF: band MAE {e['predicted']['band_mae_mev']:.1f} meV "
                   f"(H(0): {e['h0']['band_mae_mev']:.1f}), shift removed {e['predicted']['band_mae_shifted_mev']:.1f} meV "
                   f"(H(0): {e['h0']['band_mae_shifted_mev']:.1f})")
    click.echo(f"start the SCF from it: nextham-dft restart {run_dir} --out <new folder>  (density, H(R), DM(R))")


def _complete_scf(system, h_pred, settings: ScfSettings, start: str, warnings: list[str], start_density=None,
                  consistency=None, prior=(), start_hamiltonian=None, start_output=None):
    """(self-consistent H, report) from ``h_pred`` (None: the atoms' density), or from ``start_density`` on
    the grid of ``consistency`` (a density model's, with ``prior`` the steps it took, ``start_hamiltonian`` its
    H and ``start_output`` that H's output density when measured: ``complete_scf``), by ``core.scf``; ``start``
    names the start in the report; progress and warnings on stderr."""
    from .core.scf import complete_scf

    def progress(it: int, res: float) -> None:
        click.echo(f"scf iteration {it}: ∫|ρ_out − ρ_in|/N_e = {res:.2e}", err=True)

    res = complete_scf(system, start=h_pred, settings=settings, progress=progress, start_density=start_density,
                       consistency=consistency, prior=prior, start_hamiltonian=start_hamiltonian,
                       start_output=start_output)
    if not res.converged and settings.tol > 0:  # tol 0: a fixed number of steps was asked for
        warnings.append(f"the SCF completion did not converge in {settings.max_iter} iterations (residual "
                        f"{res.residuals[-1]:.1e} > {settings.tol:.0e}); the last H is written")
        click.echo(f"warning: {warnings[-1]}", err=True)
    return res.hamiltonian, {"converged": res.converged, "iterations": res.iterations, "residuals": res.residuals,
                             "tol": settings.tol, "steps_only": settings.tol == 0, "spacing_ang": settings.spacing,
                             "start": start, "prior_steps": len(prior) if settings.prior_history else 0,
                             "seconds": res.seconds, "fermi_ev": res.fermi_ev}


def _with_prediction(system, h_pred):
    """A copy of the system whose converged H is the prediction (the DFT one is dropped)."""
    import copy

    out = copy.copy(system)
    out.matrices = {"H0": system.matrices["H0"], "S": system.matrices["S"], "H": h_pred}
    out.reference_eigenvalues = {k: v for k, v in system.reference_eigenvalues.items() if k == "H0"}
    out.fermi_ev = {k: v for k, v in system.fermi_ev.items() if k == "H0"}
    return out


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(), default=None, help="New folder (default: RUN_DIR/nextham-zeroth).")
@click.option("--keep-kpoints", is_flag=True, help="Keep the user's k-mesh for the zeroth step (default: 1×1×1).")
@click.option("--run", "run_now", is_flag=True, help="Run ABACUS now (needs an executable).")
@click.option("--abacus", "abacus_exe", default=None, help="ABACUS executable (default: 'abacus' on PATH).")
@click.option("--mpi", type=int, default=1, show_default=True, help="MPI processes for --run.")
@friendly_errors
def setup(run_dir, out_dir, keep_kpoints, run_now, abacus_exe, mpi):
    """Write the zeroth-step input (one SCF iteration from atomic densities) of an ABACUS input set."""
    import shlex
    import shutil
    import subprocess

    from .adapters.abacus.setup import setup_zeroth_step

    out = setup_zeroth_step(run_dir, out_dir, keep_kpoints)
    exe = abacus_exe or "abacus"
    cmd = ([f"mpirun -np {mpi}"] if mpi > 1 else []) + [exe]
    click.echo(f"wrote {out}/INPUT, STRU, KPT" + ("" if keep_kpoints else " (1×1×1: H(0)(R) does not depend on the mesh; "
                                                  "your mesh is kept in KPT.user)"))
    click.echo(f"run it:  cd {shlex.quote(str(out))} && {' '.join(cmd)}")
    click.echo(f"then:    nextham-dft predict {shlex.quote(str(out))} --out {shlex.quote(str(out))}/prediction")
    if run_now:
        path = shutil.which(exe)
        if path is None:
            raise NexthamError(f"ABACUS executable {exe!r} not found (give --abacus PATH)")
        argv = (["mpirun", "-np", str(mpi)] if mpi > 1 else []) + [path]
        proc = subprocess.Popen(argv, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            click.echo(line.rstrip())
        if proc.wait() != 0:
            raise NexthamError(f"ABACUS exited with status {proc.returncode} (see {out})")


#: what ``--model krylov`` says on every run (core.krylov; docs/density-model.md)
KRYLOV_WARNING = ("--model krylov is experimental and has no domain guard: on a strongly screening metal (the test "
                  "split's Pt3Ti) it came out worse than H(0); check with --scf")


def _source_matrix(system, source: str, model_path: str | None) -> str:
    """The matrix tag of ``source`` in ``system``, predicting it first for 'predicted' and completing the
    prediction to self-consistency for 'completed' (as ``predict --scf``; progress and warnings on stderr)."""
    tag = SOURCES[source]
    if source == "completed" and "HC" not in system.matrices:
        hp = system.matrices[_source_matrix(system, "predicted", model_path)]
        warnings: list[str] = []
        system.matrices["HC"], _ = _complete_scf(system, hp, ScfSettings(), "prediction", warnings)
    if source == "predicted" and "HP" not in system.matrices:
        if model_path == "krylov":  # no network (core.krylov)
            from .model.density_predict import predict_krylov

            click.echo(f"warning: {KRYLOV_WARNING}", err=True)
            system.matrices["HP"] = predict_krylov(system).hamiltonian
        else:
            model, _card, _warnings = _load_model_for(system, _model_file(model_path))
            system.matrices["HP"] = _route_hamiltonian(_density_route(model_path, model), model, system,
                                                       _device("auto"))
    system.hamiltonian(tag)
    return tag


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--source", type=click.Choice(sorted(SOURCES)), default="predicted", show_default=True,
              help="Which Hamiltonian starts the SCF.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="New output folder.")
@click.option("--model", "model_path", default=None, help="Model for --source predicted (default: as predict's).")
@click.option("--force", is_flag=True, help="Replace a previous nextham-dft output folder.")
@run_options
@friendly_errors
def restart(run_dir, source, out_dir, model_path, force, zeroth, converged, orbital_dir):
    """Starting files for the DFT code's SCF: density (cube), H(R), DM(R) and the INPUTs that read them.

    ABACUS: OUT/SPIN*_CHG.cube + INPUT (init_chg file, every version), hrs*_nao.csr + INPUT.init_chg_hr
    (ABACUS ≥ 3.11), dmrs*_nao.csr + INPUT.init_chg_dm (nspin 1, 2). SIESTA: OUT/LABEL.DM (DM.UseSaveDM).
    """
    from .registry import adapter_for
    from .writers.output import output_dir

    adapter = adapter_for(run_dir)
    if not hasattr(adapter, "write_restart"):
        raise NexthamError(f"no starting-file writer for {adapter.name} runs (ABACUS and SIESTA have one)")
    system = adapter.read_run(Path(run_dir), zeroth=zeroth, converged=converged, orbital_dir=orbital_dir)
    tag = _source_matrix(system, source, model_path)
    with output_dir(out_dir, force) as tmp:
        info = adapter.write_restart(tmp, Path(run_dir), system, tag)
        (tmp / "restart.json").write_text(json.dumps({"source": source, **info}, indent=1))
    extra = (f", grid {'×'.join(map(str, info['grid']))} {info['grid_source']}, "
             f"{info['electrons_on_grid']:.4f} electrons on the grid" if "grid" in info else "")
    click.echo(f"wrote {out_dir}: {', '.join(info['files'])}  (E_F {info['fermi_ev']:.4f} eV{extra})")
    click.echo(f"then: {info['how'].format(out=out_dir)}")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["deeph"]), default="deeph", show_default=True)
@click.option("--source", type=click.Choice(sorted(SOURCES)), default="scf", show_default=True,
              help="Which Hamiltonian to export.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="New output folder.")
@click.option("--model", "model_path", default=None, help="Model for --source predicted (default: as predict's).")
@click.option("--force", is_flag=True, help="Replace a previous nextham-dft output folder.")
@run_options
@friendly_errors
def export(run_dir, fmt, source, out_dir, model_path, force, zeroth, converged, orbital_dir):
    """Export a Hamiltonian and S in another tool's format (DeepH: hamiltonians.h5, overlaps.h5, …)."""
    from .adapters.deeph import write_deeph
    from .writers.output import output_dir

    system = _read(run_dir, zeroth, converged, orbital_dir)
    tag = _source_matrix(system, source, model_path)
    with output_dir(out_dir, force) as tmp:
        write_deeph(tmp, system, tag)
    click.echo(f"wrote {out_dir} ({fmt}, {source})")


if __name__ == "__main__":  # pragma: no cover
    main()
