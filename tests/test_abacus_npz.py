"""ABACUS's NPZ matrix archives (out_hr_npz / out_hsr_npz, out_hsr 3), read like the text files.

No ABACUS build here writes NPZ, so the archives are made from real text runs in the layout of
ABACUS's ModuleIO::output_mat_npz (adapters/abacus/npz.py), and must read back to the same matrices.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nextham_dft.adapters.abacus import read_run
from nextham_dft.adapters.abacus.csr import CsrFile, read_csr
from nextham_dft.adapters.abacus.npz import read_npz
from nextham_dft.cli import main
from nextham_dft.core.units import ANG_TO_BOHR

from .conftest import DATA, EXAMPLE, need


def write_npz(path: Path, system, csr: CsrFile, half: bool = False) -> None:
    """``csr`` (a text file's contents: ABACUS order and units) as ABACUS's NPZ archive of ``system``'s
    cell; ``half``: only the atom pairs i ≤ j, as a parallel ABACUS run writes them."""
    nw = np.array([system.bases[k].norb for k in system.kinds])
    spin = csr.dim // int(nw.sum())
    offset = np.concatenate([[0], np.cumsum(spin * nw)])
    atom_of = np.repeat(np.arange(len(nw)), spin * nw)
    frac = system.positions @ np.linalg.inv(system.lattice)
    arrays = {"lattice_vectors": (system.lattice * ANG_TO_BOHR).reshape(9),
              "atom_info": np.column_stack([system.kinds, np.zeros(len(nw)), frac]).astype(float)}
    for it, basis in enumerate(system.bases):  # (zeta, l, m) in ABACUS's order: l, zeta, m = 0, 1, -1, …
        arrays[f"orbital_info_{it}"] = np.array([(s.zeta, s.l, (k + 1) // 2 * (1 if k % 2 else -1))
                                                 for s in basis.shells for k in range(2 * s.l + 1)], dtype=float)
    ai, aj = atom_of[csr.rows], atom_of[csr.cols]
    key = (ai * len(nw) + aj) * len(csr.R) + csr.Ridx
    for k in np.unique(key):
        i, j, r = k // len(csr.R) // len(nw), k // len(csr.R) % len(nw), k % len(csr.R)
        if half and i > j:
            continue
        sel = key == k
        block = np.zeros((spin * nw[i], spin * nw[j]), dtype=csr.values.dtype)
        block[csr.rows[sel] - offset[i], csr.cols[sel] - offset[j]] = csr.values[sel]
        arrays["mat_{}_{}_{}_{}_{}".format(i, j, *csr.R[r])] = block
    np.savez(path, **arrays)


def npz_copy(src: Path, out: Path, h_name: str, s_name: str, half: bool = False) -> Path:
    """A copy of the run ``src`` whose steps hold NPZ archives of their matrices instead of text files."""
    system = read_run(src)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.csr*"))
    for step in sorted(p for p in src.iterdir() if p.name.startswith("OUT.")):
        texts = sorted(step.glob("*.csr*"))
        h = next(p for p in texts if "HR" in p.name or p.name.startswith("hrs"))
        s = next(p for p in texts if "SR" in p.name or p.name.startswith("srs"))
        write_npz(out / step.name / h_name, system, read_csr(h), half)
        write_npz(out / step.name / s_name, system, read_csr(s), half)
    return out


@pytest.mark.parametrize("half", [False, True])
def test_an_npz_run_reads_as_its_text_files(tmp_path, half):
    """The example (nspin 1) as output_HR0.npz / output_SR.npz, all pairs (serial ABACUS) or i ≤ j only
    (parallel ABACUS): the same H(0), H and S as from the text files."""
    src = need(EXAMPLE)
    run = npz_copy(src, tmp_path / "run", "output_HR0.npz", "output_SR.npz", half)
    assert not list(run.rglob("*.csr*"))
    text, npz = read_run(src), read_run(run)
    assert npz.meta["csr_generation"] == "npz" and "NPZ" in npz.meta["generation"]
    for tag in ("H0", "H", "S"):
        assert text.matrices[tag].max_abs_diff(npz.matrices[tag]) == 0.0


def test_an_soc_npz_run_reads_and_predicts(tmp_path):
    """nspin 4 with SOC (complex spinor blocks) under the names of ABACUS develop from 2026-07
    (hrs1_nao.npz, sr_nao.npz): the same matrices; `predict` writes text files of that generation."""
    src = need(DATA / "supercell" / "alp_prim_soc")
    run = npz_copy(src, tmp_path / "run", "hrs1_nao.npz", "sr_nao.npz", half=True)
    text = read_run(src, orbital_dir=DATA / "pp_orb")
    npz = read_run(run, orbital_dir=DATA / "pp_orb")
    for tag in ("H0", "H", "S"):  # the text file's two halves agree to its print rounding only
        assert text.matrices[tag].max_abs_diff(npz.matrices[tag]) < 1e-12
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "pred"),
                                    "--orbital-dir", str(DATA / "pp_orb")])
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "pred" / "abacus").iterdir()) == ["hrs1_nao.csr", "sr_nao.csr"]


def test_a_broken_npz_archive_is_one_line(tmp_path):
    src = need(EXAMPLE)
    run = npz_copy(src, tmp_path / "run", "output_HR0.npz", "output_SR.npz")
    data = (run / "OUT.h0" / "output_HR0.npz").read_bytes()
    (run / "OUT.h0" / "output_HR0.npz").write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(main, ["predict", str(run), "--out", str(tmp_path / "pred")])
    assert res.exit_code != 0 and "output_HR0.npz" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "pred").exists()
    with pytest.raises(Exception, match="NPZ"):
        read_npz(run / "OUT.h0" / "output_HR0.npz")
