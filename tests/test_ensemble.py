"""Ensembles: several networks whose corrections are averaged keep every symmetry, store and load
with a checksum, and are refused where they cannot be used."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nextham_dft.adapters.abacus import read_run
from nextham_dft.cli import main
from nextham_dft.core.kspace import KAssembler
from nextham_dft.model.ensemble import EnsembleError, ModelEnsemble
from nextham_dft.model.network import HamiltonianCorrection
from nextham_dft.model.predict import member_spread, predict_correction, predict_member_corrections
from nextham_dft.model.store import (ModelFileError, combine_models, load_model, load_weights_into, save_model,
                                     select_member)
from nextham_dft.testing import assert_hamiltonian_equivariant

from .conftest import DATA, EXAMPLE, need
from .test_model import SMALL, _config, _random_model

CFG = dataclasses.replace(SMALL, trace_feedback=True)


def _pair() -> ModelEnsemble:
    return ModelEnsemble([_random_model(CFG, seed=1), _random_model(CFG, seed=2)])


def test_ensemble_is_the_mean_of_its_members_and_stays_equivariant_on_a_soc_run():
    """ΔH of the ensemble = the mean of its members' (to rounding), differs from each member, and is
    E(3)-equivariant, hermitian and time-reversal symmetric like they are."""
    system = read_run(need(DATA / "runs" / "t0045"))
    ens = _pair()
    parts = predict_member_corrections(ens, system, dtype=torch.float64)
    d = predict_correction(ens, system, dtype=torch.float64)
    assert d.spin == "spinor" and len(parts) == 2
    want = 0.5 * (parts[0].data + parts[1].data)
    assert np.abs(d.data - want).max() < 1e-12
    assert min(np.abs(d.data - p.data).max() for p in parts) > 1e-4  # the members really differ
    # each member run alone through predict_correction gives the same average
    single = [predict_correction(m, system, dtype=torch.float64) for m in ens.members]
    assert np.abs(d.data - 0.5 * (single[0].data + single[1].data)).max() < 1e-12
    assert_hamiltonian_equivariant(lambda s: predict_correction(ens, s, dtype=torch.float64), system,
                                   n_rotations=1, rtol=1e-5)
    k = np.random.default_rng(3).random((2, 3))
    hk = KAssembler(d, spinor=True)(k)
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-12)
    sy = np.kron(np.eye(d.dim), np.array([[0, -1j], [1j, 0]]))
    assert np.allclose(hk, sy @ np.conj(KAssembler(d, spinor=True)(-k)) @ sy.conj().T, atol=1e-10)
    spread = member_spread(parts)
    diff = np.abs(parts[0].data - parts[1].data)  # two members: the std is half their difference
    assert spread["members"] == 2 and spread["spread_mean_mev"] == pytest.approx(1e3 * 0.5 * diff.mean(), rel=1e-9)
    assert member_spread(parts[:1]) == {}


def test_members_of_different_architectures_are_refused():
    with pytest.raises(EnsembleError, match="member 1 has another architecture.*mlp_hidden"):
        ModelEnsemble([_random_model(CFG), _random_model(dataclasses.replace(CFG, mlp_hidden=8))])
    with pytest.raises(EnsembleError, match="at least one member"):
        ModelEnsemble([])


def _saved(tmp_path, name: str, model, split: dict | None = None) -> str:
    path = tmp_path / f"{name}.pt"
    save_model(path, model, {"split": split or {"train": ["a"], "val": ["b"], "test": ["c"]}, "elements": ["Si"]})
    return str(path)


def test_ensemble_file_round_trip_checksum_and_combine(tmp_path):
    """combine → save → load gives the same predictions (float32 weights) and a card naming its
    members; a changed byte is caught; an ensemble cannot seed a single network."""
    system = read_run(need(EXAMPLE))
    a, b = _random_model(CFG, seed=1), _random_model(CFG, seed=2)
    ens, card = combine_models([_saved(tmp_path, "a", a), _saved(tmp_path, "b", b)])
    assert [m["file"] for m in card["members"]] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    save_model(tmp_path / "ens.pt", ens, card)
    loaded, lcard = load_model(tmp_path / "ens.pt")
    assert isinstance(loaded, ModelEnsemble) and len(loaded.members) == 2 and lcard["n_members"] == 2
    assert loaded.known_elements == frozenset({"Si"})
    want = predict_correction(ens.float(), system)
    assert np.abs(predict_correction(loaded, system).data - want.data).max() < 1e-6
    raw = bytearray((tmp_path / "ens.pt").read_bytes())
    raw[len(raw) // 2] ^= 1
    (tmp_path / "ens.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "ens.pt")
    with pytest.raises(ModelFileError, match="cannot seed one network"):
        load_weights_into(HamiltonianCorrection(CFG), loaded)


def test_combine_refuses_other_splits_and_single_files(tmp_path):
    a = _saved(tmp_path, "a", _random_model(CFG, seed=1))
    b = _saved(tmp_path, "b", _random_model(CFG, seed=2), split={"train": ["c"], "val": ["b"], "test": ["a"]})
    with pytest.raises(ModelFileError, match="another train/val/test split"):
        combine_models([a, b])
    with pytest.raises(ModelFileError, match="at least two"):
        combine_models([a])
    c = _saved(tmp_path, "c", _random_model(dataclasses.replace(CFG, mlp_hidden=8)))
    with pytest.raises(ModelFileError, match="another architecture"):
        combine_models([a, c])


def test_ensemble_command_then_predict_reports_the_members_spread(tmp_path):
    """`nextham-dft ensemble A B -o E.pt`, then `predict --model E.pt` writes the members' spread
    into report.json; an existing output is not overwritten, and bad members fail in one line."""
    a = _saved(tmp_path, "a", _random_model(CFG, seed=1).float())
    b = _saved(tmp_path, "b", _random_model(CFG, seed=2).float())
    runner = CliRunner()
    res = runner.invoke(main, ["ensemble", a, b, "-o", str(tmp_path / "e.pt")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["ensemble", a, b, "-o", str(tmp_path / "e.pt")])
    assert res.exit_code != 0 and "exists" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["ensemble", a, str(tmp_path / "e.pt"), "-o", str(tmp_path / "f.pt")])
    assert res.exit_code != 0 and "already an ensemble" in res.output and "Traceback" not in res.output
    out = tmp_path / "pred"
    res = runner.invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(out), "--model", str(tmp_path / "e.pt")])
    assert res.exit_code == 0, res.output
    assert "ensemble of 2 networks" in res.output
    report = json.loads((out / "report.json").read_text())
    assert report["ensemble"]["members"] == 2 and report["ensemble"]["spread_mean_mev"] > 0
    assert report["ensemble"]["spread_max_mev"] >= report["ensemble"]["spread_mean_mev"]


def test_fine_tuning_from_an_ensemble_needs_a_member(tmp_path, tiny_dataset):
    """`train --init ENSEMBLE` names the members to choose from in one line; `--member K` fine-tunes
    network K; a single network has no member 1."""
    ens = ModelEnsemble([_random_model(SMALL, seed=1).float(), _random_model(SMALL, seed=2).float()])
    save_model(tmp_path / "e.pt", ens, {"elements": ["Si"]})
    loaded, _ = load_model(tmp_path / "e.pt")
    assert select_member(loaded, 1) is loaded.members[1]
    single = loaded.members[0]
    assert select_member(single, None) is single
    with pytest.raises(ModelFileError, match="no member 1"):
        select_member(single, 1)
    cfg = _config(tmp_path, tiny_dataset)
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg), "--init", str(tmp_path / "e.pt"), "--device", "cpu"])
    assert res.exit_code != 0 and "ensemble of 2 networks" in res.output and "--member" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    res = runner.invoke(main, ["train", str(cfg), "--init", str(tmp_path / "e.pt"), "--member", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output


def test_ensemble_forward_is_the_mean_of_its_members_outputs():
    """The module path (ensemble(graph), as any HamiltonianCorrection is called) returns the mean of
    the members' padded outputs, SOC part included."""
    from nextham_dft.model.graph import build_graph

    system = read_run(need(DATA / "runs" / "t0045"))
    ens = _pair()
    g, _idx = build_graph(system, ens.layout, with_target=False, dtype=torch.float64, long_range=ens.cfg.long_range)
    with torch.no_grad():
        d, s = ens(g)
        outs = [m(g) for m in ens.members]
    assert s is not None
    assert torch.allclose(d, 0.5 * (outs[0][0] + outs[1][0]), atol=1e-12)
    assert torch.allclose(s, 0.5 * (outs[0][1] + outs[1][1]), atol=1e-12)


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_local_potential_ensemble_integrates_its_members_fields_together(run, monkeypatch):
    """An ensemble of local-potential networks on a deferred graph (big cells) integrates all members'
    ΔV in one quadrature: each member's ΔH equals the exact (edge, atom) contraction of the pair path,
    and ``potential_matrix`` of several coefficient sets equals each set integrated alone."""
    from nextham_dft.core.potential import potential_matrix
    from nextham_dft.model import predict as predict_module

    cfg = dataclasses.replace(SMALL, local_potential=(0.5, 1.5))
    system = read_run(need(DATA / "runs" / run))
    ens = ModelEnsemble([_random_model(cfg, seed=1), _random_model(cfg, seed=2)])
    exact = predict_member_corrections(ens, system, dtype=torch.float64)
    monkeypatch.setattr(predict_module, "POTENTIAL_PAIRS_MAX_ATOMS", 0)
    deferred = predict_member_corrections(ens, system, dtype=torch.float64)
    assert min(np.abs(exact[0].data - exact[1].data).max(), 1.0) > 1e-4  # the members differ
    for a, b in zip(exact, deferred):
        assert b.max_abs_diff(a) < 1e-10  # a 2-atom cell: both paths average every anchored grid
    c = np.random.default_rng(4).normal(size=(3, system.n_atoms, 2))
    pattern = system.matrices["S"]
    together = potential_matrix(system, cfg.local_potential, c, pattern, spacing=0.3)
    alone = np.stack([potential_matrix(system, cfg.local_potential, x, pattern, spacing=0.3) for x in c], 1)
    assert together.shape == (len(pattern.data), 3) and np.abs(together - alone).max() < 1e-12
