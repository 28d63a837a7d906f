"""`nextham-dft setup`: the zeroth-step input of a user's ABACUS input set."""

from __future__ import annotations

import os
import shutil
import stat

from click.testing import CliRunner

from nextham_dft.adapters.abacus.inputs import read_input, read_kpt, read_stru
from nextham_dft.adapters.abacus.run import read_basis
from nextham_dft.cli import main

from .conftest import DATA, EXAMPLE, need
from .test_cli import assert_clean_error


def _user_set(tmp_path, src, input_name="INPUT.scf"):
    d = tmp_path / "user"
    d.mkdir()
    for f in ("STRU", "KPT"):
        shutil.copy(src / f, d / f)
    for f in list(src.glob("*.orb")) + list(src.glob("*.upf")):
        shutil.copy(f, d / f.name)
    shutil.copy(src / input_name, d / "INPUT")
    return d


def test_setup_writes_zeroth_step_and_keeps_user_files(tmp_path):
    d = _user_set(tmp_path, need(EXAMPLE))
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    res = CliRunner().invoke(main, ["setup", str(d)])
    assert res.exit_code == 0, res.stderr
    out = d / "nextham-zeroth"
    p = read_input(out / "INPUT")
    for k, v in {"calculation": "scf", "init_chg": "atomic", "scf_nmax": "1", "mixing_beta": "0",
                 "mixing_beta_mag": "0", "out_mat_hs2": "1"}.items():
        assert p[k] == v
    assert p["ecutwfc"] == "60" and p["nspin"] == "1" and p["suffix"] == "nextham_h0"
    assert read_kpt(out / "KPT").mesh == (1, 1, 1) and read_kpt(out / "KPT.user").mesh == (5, 5, 5)
    stru = read_stru(out / "STRU")
    read_basis(out, stru, p)  # orbital_dir resolves from the new folder
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert "cd " in res.output and "abacus" in res.output
    assert_clean_error(CliRunner().invoke(main, ["setup", str(d)]))  # never overwrites


def test_setup_soc_without_moments_writes_tiny_moment(tmp_path):
    src = need(DATA / "runs" / "t0045")
    d = _user_set(tmp_path, src)
    stru = (d / "STRU").read_text().replace("2e-05", "0.0")
    (d / "STRU").write_text(stru)
    inp = (d / "INPUT").read_text().replace("../../pp_orb", str(DATA / "pp_orb"))
    (d / "INPUT").write_text(inp)
    res = CliRunner().invoke(main, ["setup", str(d), "--keep-kpoints"])
    assert res.exit_code == 0, res.stderr
    s = read_stru(d / "nextham-zeroth" / "STRU")
    assert abs(s.magmom[:, 2] - 2e-5).max() < 1e-12
    assert read_kpt(d / "nextham-zeroth" / "KPT").mesh == read_kpt(d / "KPT").mesh


def test_setup_run_streams_a_fake_abacus(tmp_path):
    d = _user_set(tmp_path, need(EXAMPLE))
    fake = tmp_path / "abacus"
    fake.write_text("#!/bin/sh\necho 'ABACUS fake: SCF 1'\nls INPUT STRU KPT\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    res = CliRunner().invoke(main, ["setup", str(d), "--run", "--abacus", str(fake)])
    assert res.exit_code == 0, res.stderr
    assert "ABACUS fake: SCF 1" in res.output and "KPT" in res.output
    bad = tmp_path / "bad"
    shutil.copytree(d, bad, ignore=shutil.ignore_patterns("nextham-zeroth"))
    res = CliRunner().invoke(main, ["setup", str(bad), "--run", "--abacus", str(tmp_path / "nope")])
    assert_clean_error(res)
    assert os.path.isdir(bad / "nextham-zeroth")  # the input was written before the run was attempted
