"""The equivariant correction model: exact symmetry, hermiticity, irreps algebra, training and DDP."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nextham_dft.adapters.abacus import read_run
from nextham_dft.cli import main
from nextham_dft.evaluation import block_lengths
from nextham_dft.core.kspace import KAssembler
from nextham_dft.core.blocks import spinor_to_ab
from nextham_dft.model.config import ModelConfig, TrainConfig, dump_yaml, load_train_config
from nextham_dft.model.graph import build_graph
from nextham_dft.model.irreps import BasisLayout, BlockIrreps
from nextham_dft.model.network import HamiltonianCorrection
from nextham_dft.model.predict import predict_correction
from nextham_dft.model.store import load_model
from nextham_dft.model.train import split_ids
from nextham_dft.testing import assert_hamiltonian_equivariant, irreps_d, wigner_d

from .conftest import DATA, EXAMPLE, need

SMALL = ModelConfig(hidden_irreps="8x0e+2x0o+2x1o+2x1e+2x2e+2x2o+1x3o+1x3e", num_layers=1, mlp_hidden=16, embed_dim=4)


def _random_model(cfg: ModelConfig = SMALL, seed: int = 0) -> HamiltonianCorrection:
    torch.manual_seed(seed)
    m = HamiltonianCorrection(cfg).double()
    with torch.no_grad():  # the heads start at (near) zero; make every path count
        for p in m.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def layout_maps():
    return BlockIrreps(BasisLayout())


def test_block_irreps_are_orthogonal_and_equivariant(layout_maps):
    bi = layout_maps
    for mat in (bi.matrix, bi.matrix_spin):
        assert np.allclose(mat.T @ mat, np.eye(mat.shape[1]), atol=1e-12)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    n = bi.layout.size
    D = np.zeros((n, n))
    for l, _z, o in bi.layout.shells:
        D[o : o + 2 * l + 1, o : o + 2 * l + 1] = wigner_d(l, q)
    B = rng.normal(size=(1, n, n))
    c = bi.to_irreps(torch.tensor(B))[0].numpy()
    c_rot = bi.to_irreps(torch.tensor(D @ B[0] @ D.T)[None])[0].numpy()
    Dir = irreps_d(bi.irreps, q)
    assert np.allclose(Dir @ c, c_rot, atol=1e-10)
    assert np.allclose(bi.from_irreps(torch.tensor(c)[None])[0].numpy(), B[0], atol=1e-12)


@pytest.mark.parametrize("run,trace", [("s0221", False), ("t0045", False), ("t0045", True)])
def test_model_is_e3_equivariant_and_hermitian(run, trace):
    """Random rotations and inversion: predicted blocks transform with Wigner-D (and SU(2) for SOC);
    with the trace-based non-linearity too."""
    system = read_run(need(DATA / "runs" / run))
    model = _random_model(dataclasses.replace(SMALL, trace_feedback=trace))
    predict = lambda s: predict_correction(model, s, dtype=torch.float64)  # noqa: E731
    assert_hamiltonian_equivariant(predict, system, n_rotations=2, rtol=1e-5)
    d = predict(system)
    assert np.abs(d.data).max() > 1e-4  # the test can fail: the model is not trivially zero
    k = np.random.default_rng(1).random((2, 3))
    hk = KAssembler(d, spinor=d.spin == "spinor")(k)
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-12)
    if d.spin == "spinor":  # time reversal: ΔH(k) = σy ΔH(-k)* σy
        sy = np.kron(np.eye(d.dim), np.array([[0, -1j], [1j, 0]]))
        hm = KAssembler(d, spinor=True)(-k)
        assert np.allclose(hk, sy @ np.conj(hm) @ sy.conj().T, atol=1e-10)


def test_correction_cutoff_zeroes_far_blocks_and_keeps_the_symmetries():
    """r_corr: blocks longer than it keep H(0) exactly (ΔH = 0, SOC part too), the rest stay
    equivariant and hermitian; a cutoff beyond every block changes nothing."""
    system = read_run(need(DATA / "runs" / "t0045"))
    cfg = dataclasses.replace(SMALL, trace_feedback=True)
    full = predict_correction(_random_model(cfg), system, dtype=torch.float64)
    r = block_lengths(system, full)
    shells = np.unique(np.round(r, 4))
    k = len(shells) // 2  # halfway between two neighbour shells: rotations cannot move a block across it
    r_corr = float(0.5 * (shells[k] + shells[k + 1]))
    model = _random_model(dataclasses.replace(cfg, r_corr=r_corr))
    predict = lambda s: predict_correction(model, s, dtype=torch.float64)  # noqa: E731
    d = predict(system)
    assert d.spin == "spinor"
    size = np.array([np.abs(d.data[d.offsets[e]:d.offsets[e + 1]]).max() for e in range(len(r))])
    assert np.all(size[r > r_corr] == 0.0) and np.all(size[r < r_corr] > 0.0) and (r > r_corr).any()
    assert_hamiltonian_equivariant(predict, system, n_rotations=1, rtol=1e-5)
    k = np.random.default_rng(2).random((2, 3))
    hk = KAssembler(d, spinor=True)(k)
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-12)
    g, _ = build_graph(system, model.layout, dtype=torch.float64)
    blocks, spin = model(g)
    (blocks.square().sum() + spin.square().sum()).backward()  # trains: gradients reach the weights
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(q).all() for q in grads) and any(q.abs().max() > 0 for q in grads)
    wide = _random_model(dataclasses.replace(cfg, r_corr=float(r.max()) + 1.0))
    assert predict_correction(wide, system, dtype=torch.float64).max_abs_diff(full) < 1e-12


def test_equivariance_helper_catches_a_broken_model():
    system = read_run(need(EXAMPLE))
    model = _random_model()

    def broken(s):
        d = predict_correction(model, s, dtype=torch.float64)
        return d.with_data(d.data + 1e-3 * s.positions[0, 0])  # depends on absolute orientation

    with pytest.raises(AssertionError, match="not equivariant"):
        assert_hamiltonian_equivariant(broken, system, n_rotations=1, inversion=False)


@pytest.mark.parametrize("trace", [False, True])
def test_translation_and_permutation_invariance(trace):
    system = read_run(need(EXAMPLE))
    model = _random_model(dataclasses.replace(SMALL, trace_feedback=trace))
    base = predict_correction(model, system, dtype=torch.float64)
    import copy

    moved = copy.copy(system)
    moved.positions = system.positions + np.array([0.37, -1.2, 2.5])
    assert predict_correction(model, moved, dtype=torch.float64).max_abs_diff(base) < 1e-10
    perm = np.array([1, 0])
    swapped = copy.copy(system)
    swapped.positions = system.positions[perm]
    swapped.kinds = system.kinds[perm]
    swapped.matrices = {k: v.permute_atoms(perm) for k, v in system.matrices.items()}
    got = predict_correction(model, swapped, dtype=torch.float64)
    assert got.max_abs_diff(base.permute_atoms(perm)) < 1e-10


def test_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(data="x.h5", held_out_elements=("Au",), model=SMALL)
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_train_config(p) == cfg
    p.write_text("epochs: 3\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_train_config(p)
    p.write_text("model:\n  r_corr: -1.0\n")
    with pytest.raises(ValueError, match="r_corr"):
        load_train_config(p)
    p.write_text("split_seed: abc\n")
    with pytest.raises(ValueError, match="split_seed"):
        load_train_config(p)
    p.write_text("window_reference: h1\n")
    with pytest.raises(ValueError, match="window_reference"):
        load_train_config(p)
    p.write_text("real_weighting: atoms\n")
    with pytest.raises(ValueError, match="real_weighting must be 'entries' or 'metric'"):
        load_train_config(p)


def test_train_without_its_data_is_one_line_and_writes_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(dump_yaml(TrainConfig(data=str(tmp_path / "missing.h5"), out_dir=str(tmp_path / "run"), model=SMALL)))
    res = CliRunner().invoke(main, ["train", str(cfg)])
    assert res.exit_code != 0 and "training data not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def _assert_train_config_refused(tmp_path, text: str, message: str) -> None:
    """`train` on a config holding ``text`` fails with ``message`` in one line and writes nothing."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'run'}\n{text}")
    res = CliRunner().invoke(main, ["train", str(cfg)])
    assert res.exit_code != 0 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, message", [("window_reference: h1", "window_reference must be 'h0' or 'absolute'"),
                                             ("real_weighting: atoms", "real_weighting must be 'entries' or 'metric'")])
def test_train_with_a_bad_loss_option_is_one_line_and_writes_nothing(tmp_path, option, message):
    _assert_train_config_refused(tmp_path, f"{option}\n", message)


@pytest.mark.parametrize("option, message", [("r_env: -1.0", "r_env must be > 0"),
                                             ("env_channels: 0", "env_channels must be an integer >= 1")])
def test_train_with_a_bad_bond_env_option_is_one_line_and_writes_nothing(tmp_path, option, message):
    _assert_train_config_refused(tmp_path, f"model:\n  bond_env: true\n  {option}\n", message)


@pytest.mark.parametrize("option, message", [("local_potential: [0.3, -1.0]", "local_potential must be null or a list"),
                                             ("local_potential: 0.5", "local_potential must be null or a list"),
                                             ("potential_spacing: 2.0", "potential_spacing must lie in"),
                                             ("element_descriptors: 'yes'", "element_descriptors must be true or false")])
def test_train_with_a_bad_model_option_is_one_line_and_writes_nothing(tmp_path, option, message):
    _assert_train_config_refused(tmp_path, f"model:\n  {option}\n", message)


def test_split_seed_fixes_the_split_apart_from_the_training_seed():
    ids = [f"s{i:03d}" for i in range(40)]
    elements = {i: {"Si"} if int(i[1:]) % 5 else {"Au", "Si"} for i in ids}

    def split(**kw):
        return split_ids(ids, elements, TrainConfig(val_fraction=0.2, test_fraction=0.2, held_out_elements=("Au",), **kw))

    assert split(seed=1, split_seed=7) == split(seed=2, split_seed=7)  # replicates share the split
    assert split(seed=7) == split(seed=3, split_seed=7)  # by default the split follows seed
    assert split(seed=1) != split(seed=2)
    a = split(seed=4, split_seed=9)
    assert set(a["test"]) >= {i for i in ids if "Au" in elements[i]}
    parts = [set(a[k]) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)


def _config(tmp_path: Path, data: Path, **kw) -> Path:
    opts = {"epochs": 2, "val_fraction": 0.0, "test_fraction": 0.0, **kw}
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), batch_size=1, k_per_structure=2,
                      budget_minutes=5, model=SMALL, **opts)
    p = tmp_path / "cfg.yaml"
    p.write_text(dump_yaml(cfg))
    return p


def test_train_cli_checkpoints_resumes_and_logs(tmp_path, tiny_dataset):
    cfg = _config(tmp_path, tiny_dataset)
    res = CliRunner().invoke(main, ["train", str(cfg), "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").is_file() and (run / "best.pt").is_file() and (run / "best.json").is_file()
    lines = (run / "log.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch")
    # resume: more epochs continue from the checkpoint
    txt = cfg.read_text().replace("epochs: 2", "epochs: 3")
    cfg.write_text(txt)
    res = CliRunner().invoke(main, ["train", str(cfg), "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    assert len((run / "log.csv").read_text().splitlines()) == 4
    # fine-tune from the trained model into a new folder
    cfg2 = tmp_path / "ft.yaml"
    cfg2.write_text(txt.replace(str(run), str(tmp_path / "ft")))
    res = CliRunner().invoke(main, ["train", str(cfg2), "--init", str(run / "best.pt"), "--device", "cpu"])
    assert res.exit_code == 0, res.stderr


def test_weight_average_follows_the_update_rule_and_restores_the_weights():
    from nextham_dft.model.ema import WeightAverage

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = WeightAverage(lin, decay=0.5)
    expect = torch.ones(1, 2)
    for value in (3.0, -1.0, 7.0):
        with torch.no_grad():
            lin.weight.fill_(value)
        d = ema.rate()
        assert d == min(0.5, (1 + ema.updates) / (10 + ema.updates))
        ema.update(lin)
        expect = d * expect + (1 - d) * value
    assert torch.allclose(ema.shadow["weight"], expect)
    with ema.applied(lin):
        assert torch.allclose(lin.weight, expect)
    assert torch.all(lin.weight == 7.0)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(lin, decay=1.0)


def test_ema_training_validates_and_saves_the_averaged_weights(tmp_path, tiny_dataset):
    cfg = _config(tmp_path, tiny_dataset, epochs=1, ema_decay=0.9, val_fraction=0.34)
    res = CliRunner().invoke(main, ["train", str(cfg), "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    best, _card = load_model(tmp_path / "run" / "best.pt")
    shadow, raw = ck["ema"]["shadow"], ck["model"]
    moved = False
    for k, p in best.named_parameters():
        assert torch.equal(p.detach(), shadow[k]), k
        moved |= not torch.equal(shadow[k], raw[k])
    assert moved  # the average is not the last weights
    last, last_card = load_model(tmp_path / "run" / "last.pt")  # the last epoch's average, whatever best.pt holds
    assert last_card["epoch"] == ck["state"]["epoch"]
    for k, p in last.named_parameters():
        assert torch.equal(p.detach(), shadow[k]), k
    cfg.write_text(cfg.read_text().replace("ema_decay: 0.9", "ema_decay: 1.5"))
    res = CliRunner().invoke(main, ["train", str(cfg), "--device", "cpu"])
    assert res.exit_code != 0 and "ema_decay" in res.output + res.stderr


def test_without_a_validation_split_nothing_is_validated(tmp_path, tiny_dataset, monkeypatch):
    """val_fraction 0: the empty validation split stays empty (it once read every structure of the
    file, the test split's included, to pick best.pt); the training loss picks best.pt instead."""
    import json

    from nextham_dft.model import train as train_mod

    def refuse(*_a, **_k):
        raise AssertionError("validated without a validation split")

    monkeypatch.setattr(train_mod, "validate", refuse)
    cfg = load_train_config(_config(tmp_path, tiny_dataset, epochs=1, test_fraction=0.34))
    train_mod.train(cfg, progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["val"] == [] and len(split["test"]) == 1 and len(split["train"]) == 2
    card = json.loads((tmp_path / "run" / "best.json").read_text())
    assert card["val"]["val_h0_mae_mev"] == 0 and card["val"]["score"] > 0  # the training loss


def test_band_window_loss_trains_and_is_logged(tmp_path, tiny_dataset):
    """w_window > 0 adds the band-window term: it is logged, relative to H(0) (≈ 1 at the start, where
    the correction is zero), and trains without the orthonormalised term."""
    cfg = _config(tmp_path, tiny_dataset, epochs=1, w_kspace=0.0, w_window=1.0, select_on="loss")
    cfg.write_text(cfg.read_text().replace("val_fraction: 0.0", "val_fraction: 0.34"))
    res = CliRunner().invoke(main, ["train", str(cfg), "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    head, row = (tmp_path / "run" / "log.csv").read_text().splitlines()[:2]
    col = dict(zip(head.split(","), row.split(",")))
    assert 0.0 < float(col["window"]) < 5.0 and 0.0 < float(col["val_window"]) < 5.0
    import json

    val = json.loads((tmp_path / "run" / "best.json").read_text())["val"]
    assert val["score"] > val["val_mae_mev"] / 50.0  # the objective (k-space terms included), not the MAE alone
    bad = cfg.read_text().replace("select_on: loss", "select_on: bands")
    cfg.write_text(bad)
    res = CliRunner().invoke(main, ["train", str(cfg), "--device", "cpu"])
    assert res.exit_code != 0 and "select_on" in res.output + res.stderr


def test_two_gloo_ranks_hold_identical_weights(tmp_path, tiny_dataset):
    cfg = _config(tmp_path, tiny_dataset, epochs=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "nextham_dft.model.train", str(cfg), "--max-steps", "1", "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a = torch.load(tmp_path / "run" / "final_rank0.pt")
    b = torch.load(tmp_path / "run" / "final_rank1.pt")
    init = HamiltonianCorrection(SMALL)  # same seed as training
    torch.manual_seed(0)
    init = HamiltonianCorrection(SMALL).state_dict()
    changed = False
    for k in a:
        assert torch.equal(a[k], b[k]), k
        changed |= not torch.equal(a[k], init[k])
    assert changed  # a step was taken


def test_edge_chunks_change_nothing_and_sparse_cg_map_equals_dense(layout_maps):
    """Big cells run in edge chunks with the block-sparse CG map: same result as one dense pass."""
    from nextham_dft.model.irreps import BlockSparseMap, shell_pair_groups

    system = read_run(need(DATA / "runs" / "t0045"))  # SOC: both heads
    model = _random_model()
    model.edge_chunk = 10**9
    whole = predict_correction(model, system, dtype=torch.float64)
    model.edge_chunk = 13
    chunked = predict_correction(model, system, dtype=torch.float64)
    assert chunked.max_abs_diff(whole) < 1e-12 * max(1.0, np.abs(whole.data).max())
    rng = torch.Generator().manual_seed(0)
    for spin in (False, True):
        dense = torch.as_tensor(layout_maps.matrix_spin if spin else layout_maps.matrix)
        sparse = BlockSparseMap(dense.numpy(), shell_pair_groups(layout_maps.layout, spin=spin)).double()
        x = torch.randn(7, dense.shape[0], generator=rng, dtype=torch.float64)
        assert torch.allclose(sparse(x), x @ dense, atol=1e-6)
        assert torch.allclose(sparse.transpose(x), x @ dense.T, atol=1e-6)


def test_unseen_elements_use_the_unknown_embedding():
    """An element outside the model card's list is fed as 'unknown' (index 0), never as an untrained row."""

    system = read_run(need(EXAMPLE))
    model = _random_model()
    model.known_elements = frozenset({"Ga"})  # Si unseen
    got = predict_correction(model, system, dtype=torch.float64)
    g, idx = build_graph(system, model.layout, with_target=False, dtype=torch.float64)
    g.z = torch.zeros_like(g.z)
    with torch.no_grad():
        d, _ = model(g)
    from nextham_dft.model.graph import corrections_to_blocks

    want = corrections_to_blocks(system, idx, model.layout, d[: idx.n_stored].numpy(), None)
    assert got.max_abs_diff(want) < 1e-12
    model.known_elements = frozenset({"Si"})
    assert predict_correction(model, system, dtype=torch.float64).max_abs_diff(want) > 1e-6


def test_descriptor_table_places_chemically_close_elements_close():
    """Each column is z-scored with no NaN left; Ti is nearer Zr (same group) than O or Sr; row 0 is
    the unknown element's flag alone."""
    from nextham_dft.model.elements import DESCRIPTORS, descriptor_table

    t = descriptor_table()
    assert t.shape == (119, len(DESCRIPTORS)) and torch.isfinite(t).all()
    dist = lambda a, b: float(torch.linalg.norm(t[a] - t[b]))  # noqa: E731
    assert dist(22, 40) < dist(22, 8) and dist(22, 40) < dist(22, 38)  # Ti–Zr < Ti–O, Ti–Sr
    assert dist(50, 32) < dist(50, 56)  # Sn–Ge < Sn–Ba
    assert t[0].sum() == 1.0 and t[0, DESCRIPTORS.index("unknown")] == 1.0
    assert abs(float(t[1:, 2].mean())) < 0.1  # electronegativity centred


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_descriptor_embedding_keeps_every_symmetry_saves_its_table_and_embeds_unseen_elements(run, tmp_path):
    """A descriptor-embedding model is equivariant and hermitian; its descriptor table travels in the
    saved file; an element outside the model card is embedded from its own descriptors, not 'unknown'."""
    from nextham_dft.model.store import save_model

    system = read_run(need(DATA / "runs" / run))
    model = _random_model(dataclasses.replace(SMALL, element_descriptors=True))
    _assert_symmetric_and_hermitian(model, system)
    assert "embed.table" in model.state_dict()
    save_model(tmp_path / "m.pt", model, {"elements": []})
    loaded, _ = load_model(tmp_path / "m.pt")
    want = predict_correction(model, system, dtype=torch.float64)
    model.known_elements = frozenset({"Og"})  # every element of the run unseen: still its own descriptors
    assert predict_correction(model, system, dtype=torch.float64).max_abs_diff(want) < 1e-12
    got = predict_correction(loaded.double(), system, dtype=torch.float64)
    assert got.max_abs_diff(want) < 1e-5 * max(1.0, float(np.abs(want.data).max()))  # float32 weights on disk
    g, idx = build_graph(system, model.layout, with_target=False, dtype=torch.float64)
    g.z = torch.zeros_like(g.z)  # what the 'unknown' row would have given: not what was predicted
    with torch.no_grad():
        d, s = model(g)
    from nextham_dft.model.graph import corrections_to_blocks

    sp = None if s is None else s[: idx.n_stored].numpy()
    assert corrections_to_blocks(system, idx, model.layout, d[: idx.n_stored].numpy(), sp).max_abs_diff(want) > 1e-6


def test_element_dropout_is_a_training_option(tmp_path):
    cfg = TrainConfig(element_dropout=0.2)
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    assert load_train_config(tmp_path / "c.yaml").element_dropout == 0.2


def test_trace_feedback_starts_at_the_model_it_fine_tunes_and_then_acts():
    """An older model loads into the trace-feedback architecture unchanged (zero-initialised
    extension); once its weights move, the prediction moves, and only through the trace path."""
    from nextham_dft.model.store import ModelFileError, load_weights_into

    system = read_run(need(EXAMPLE))
    old = _random_model()
    new = HamiltonianCorrection(dataclasses.replace(SMALL, trace_feedback=True)).double()
    load_weights_into(new, old.state_dict())
    base = predict_correction(old, system, dtype=torch.float64)
    assert predict_correction(new, system, dtype=torch.float64).max_abs_diff(base) == 0.0
    with torch.no_grad():
        for p in list(new.trace_gate.parameters()) + list(new.trace_potential.parameters()):
            p.normal_(0, 0.3)
    assert predict_correction(new, system, dtype=torch.float64).max_abs_diff(base) > 1e-4
    other = HamiltonianCorrection(dataclasses.replace(SMALL, mlp_hidden=8)).double()
    with pytest.raises(ModelFileError, match="does not fit"):
        load_weights_into(other, old.state_dict())


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_band_window_loss_is_first_order_band_error_without_the_rigid_shift(run):
    """The window loss is 0 for the true ΔH, 1 for ΔH = 0 (H(0) itself), blind to a rigid shift μS
    (which the orthonormalised loss sees), and its diagonal is the first-order band-energy error."""
    from nextham_dft.model.graph import build_graph
    from nextham_dft.model.irreps import BasisLayout
    from nextham_dft.model.losses import _delta_k, build_kdata, kspace_losses

    system = read_run(need(DATA / "runs" / run))
    layout = BasisLayout()
    g, idx = build_graph(system, layout)
    kd = build_kdata(system, idx, layout, np.array([[0.0, 0.0, 0.0], [0.25, 0.1, 0.4]]))
    assert kd.C is not None and kd.wmask.sum() > 0
    full, win = kspace_losses(g.target, kd)
    assert float(win) < 1e-4 and float(full) < 1e-6
    assert abs(float(kspace_losses(torch.zeros_like(g.target), kd)[1]) - 1.0) < 1e-5
    shifted = g.target + 0.3 * g.s * g.mask  # H → H + 0.3 eV · S
    full_s, win_s = kspace_losses(shifted, kd)
    assert float(win_s) < 1e-4 and float(full_s) > 1e-4 > float(full)
    # diagonal = first-order change of the window's band energies under a small perturbation
    rng = np.random.default_rng(0)
    pert = torch.as_tensor(rng.normal(size=g.target.shape).astype(np.float32)) * g.mask * 1e-5
    pert = 0.5 * (pert + pert[g.mirror].transpose(1, 2))  # hermitian ΔH(k)
    dk = _delta_k(pert, kd)[0].numpy().astype(complex)
    c = kd.C[0].numpy()[:, kd.wmask[0].numpy() > 0]
    first = np.einsum("dn,de,en->n", c.conj(), dk, c).real
    from nextham_dft.core.kspace import KAssembler, solve_generalized
    from nextham_dft.core.blocks import spinor_to_ab

    h = system.matrices["H"]
    ha = h if h.spin == "none" else h.with_data(spinor_to_ab(h.data)[0], "none")
    hk = KAssembler(ha)(np.zeros((1, 3)))
    sk = KAssembler(system.matrices["S"])(np.zeros((1, 3)))
    e0 = solve_generalized(hk, sk)[0]
    e1 = solve_generalized(hk + dk[None], sk)[0]
    # match window states to their bands by energy (first-order shifts ≪ level spacing except degeneracies)
    ew = np.sort(np.einsum("dn,de,en->n", c.conj(), hk[0], c).real)
    i0 = int(np.searchsorted(e0, ew.min() - 1e-4))  # C is complex64
    sel = np.arange(i0, i0 + len(ew))  # the window states are a contiguous run of bands
    assert np.allclose(e0[sel], ew, atol=1e-5)
    assert abs(first.sum() - (e1 - e0)[sel].sum()) < 1e-3 * np.abs(first).sum()


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_absolute_band_window_loss_is_the_rms_band_error_in_its_unit(run):
    """``window_scale``: an error α·H (every band stretched about zero) gives C^†(αH)C = α·diag(ε), so the
    absolute loss is |α| times the rms spread of the window energies about their mean, in scale units;
    the relative loss of the same error is that number over H(0)'s, and the true ΔH gives 0 in both."""
    from nextham_dft.core.blocks import spinor_to_ab
    from nextham_dft.core.kspace import KAssembler
    from nextham_dft.model.graph import build_graph
    from nextham_dft.model.irreps import BasisLayout
    from nextham_dft.model.losses import build_kdata, kspace_losses

    system = read_run(need(DATA / "runs" / run))
    layout = BasisLayout()
    g, idx = build_graph(system, layout, dtype=torch.float64)
    k = np.array([[0.0, 0.0, 0.0], [0.25, 0.1, 0.4]])
    kd = build_kdata(system, idx, layout, k)
    alpha, scale = 1e-3, 0.05
    stretched = g.target + alpha * (g.h0 + g.target) * g.mask  # ΔH_pred − ΔH_true = α·H (spin-free part)
    h = system.matrices["H"]
    ha = h if h.spin == "none" else h.with_data(spinor_to_ab(h.data)[0], "none")
    c, m = kd.C.numpy().astype(complex), kd.wmask.numpy() > 0
    eps = np.einsum("kdn,kde,ken->kn", c.conj(), KAssembler(ha)(k), c).real[m]  # window energies, eV
    expected = alpha * np.sqrt(np.mean((eps - eps.mean()) ** 2)) / scale
    win_abs = float(kspace_losses(stretched, kd, window_scale=scale)[1])
    assert win_abs == pytest.approx(expected, rel=1e-3)
    win_rel = float(kspace_losses(stretched, kd)[1])
    assert win_rel == pytest.approx(win_abs * np.sqrt(m.sum() * scale**2 / kd.ref_window), rel=1e-5)
    assert float(kspace_losses(g.target, kd, window_scale=scale)[1]) < 1e-3


@pytest.mark.parametrize("shared", [False, True])
def test_fused_tensor_product_equals_e3nn(shared):
    """The grouped evaluation computes e3nn's map (same weights, paths, normalisation), gradients too."""
    from e3nn import o3

    from nextham_dft.model.fused import FusedTensorProduct

    torch.manual_seed(3)
    # repeated degrees of both parities, l up to 3, and an output irrep no path reaches (6o: zeros)
    a = o3.Irreps("3x0e+2x1o+1x1e+2x2e+1x3o")
    b = o3.Irreps("2x0e+1x1o+1x2e") if shared else o3.Irreps.spherical_harmonics(3)
    out = o3.Irreps("2x0e+1x0o+3x1o+2x1e+2x2e+1x3o+1x3e+1x6o")
    tp = o3.FullyConnectedTensorProduct(a, b, out, shared_weights=shared, internal_weights=shared).double()
    fused = FusedTensorProduct(tp)
    x1 = torch.randn(7, a.dim, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(7, b.dim, dtype=torch.float64, requires_grad=True)
    w = tp.weight if shared else torch.randn(7, tp.weight_numel, dtype=torch.float64, requires_grad=True)
    ref = tp(x1, x2) if shared else tp(x1, x2, w)
    got = fused(x1, x2, w)
    assert got.shape == ref.shape and torch.all(got[:, -13:] == 0)
    # e3nn keeps its 3j symbols in float32 even in a float64 module: agreement to that precision
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    g_ref = torch.autograd.grad(ref.pow(2).sum(), [x1, x2, w])
    g_got = torch.autograd.grad(got.pow(2).sum(), [x1, x2, w])
    for r, g in zip(g_ref, g_got):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6 * r.abs().max().item())
    # and it is a different computation, not a call into e3nn: a changed weight changes it the same way
    w2 = (w * 1.5).detach()
    assert torch.allclose(fused(x1, x2, w2), (tp(x1, x2, w2) if not shared else 1.5 * tp(x1, x2)), atol=1e-6)


def test_fused_and_e3nn_products_give_the_same_model_output():
    """The size switch between the fused and e3nn evaluations changes nothing but speed."""
    run = read_run(EXAMPLE)
    torch.manual_seed(0)
    model = HamiltonianCorrection(ModelConfig(trace_feedback=True)).double()
    for p in model.parameters():  # a trained-looking model: no zero-initialised output
        p.data.normal_(0, 0.1)
    outs = []
    for rows in (10**9, 0):
        model.fused_max_rows = rows
        outs.append(predict_correction(model, run, dtype=torch.float64).data)
    assert np.abs(outs[0]).max() > 1e-3
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-6 * np.abs(outs[1]).max())


def test_bilinear_table_is_the_shared_weight_tensor_product():
    """The dense bilinear form summed from a shared-weight product's paths gives its values for any
    pairs (runs of one atom, repeats, unsorted), and says when the weights it was made from have
    changed, even by a write through ``.data`` (which leaves the version counter alone)."""
    from e3nn import o3

    from nextham_dft.model.fused import BilinearTable, FusedTensorProduct

    torch.manual_seed(5)
    h = o3.Irreps("3x0e+1x0o+2x1o+1x1e+2x2e+1x2o+1x3o")
    out = o3.Irreps("2x0e+1x0o+2x1o+2x1e+2x2e+1x3o+1x3e+1x4e")
    tp = o3.FullyConnectedTensorProduct(h, h, out).double()
    fused = FusedTensorProduct(tp)
    table = BilinearTable(tp, tp.weight)
    x = torch.randn(9, h.dim, dtype=torch.float64)
    i = torch.tensor([0, 0, 0, 3, 3, 8, 1, 1, 0, 5, 5, 5, 5, 2])
    j = torch.tensor([1, 4, 0, 3, 7, 2, 1, 6, 8, 0, 1, 2, 3, 2])
    with torch.no_grad():
        got = table.pairs(table.left(x), x, i, j, group=2)
        ref = fused(x[i], x[j], tp.weight)
        ref_e3nn = tp(x[i], x[j])
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(got, ref_e3nn, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))  # e3nn: float32 3j
    assert table.pairs(table.left(x), x, i[:0], j[:0]).shape == (0, out.dim)
    assert not table.stale(tp.weight)
    tp.weight.data.mul_(1.5)
    assert table.stale(tp.weight)
    assert table.stale(tp.weight.detach().float())


def test_pair_table_changes_no_prediction_and_follows_the_weights():
    """Above ``pair_table_min_edges`` inference evaluates the pair term as a dense bilinear form:
    the same ΔH to round-off; a table kept from earlier weights is not reused once they change; with
    autograd on, the per-path products run and gradients reach the pair weights."""
    run = read_run(EXAMPLE)
    model = _random_model(ModelConfig(trace_feedback=True))
    model.fused_max_rows = 0
    model.pair_table_min_edges = 0
    ref = predict_correction(model, run, dtype=torch.float64).data
    model.pair_table_min_edges = 1
    got = predict_correction(model, run, dtype=torch.float64).data
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    table = model._pair_table  # made, kept, and used: a doctored copy changes the prediction
    table.m.mul_(2.0)
    assert np.abs(predict_correction(model, run, dtype=torch.float64).data - ref).max() > 1e-4
    table.m.mul_(0.5)
    with torch.no_grad():
        model.pair_tp.weight.data.mul_(-0.5)  # in place, through .data: no version trace
    model.pair_table_min_edges = 0
    ref2 = predict_correction(model, run, dtype=torch.float64).data
    model.pair_table_min_edges = 1  # the kept table is for the old weights: it must be remade
    got2 = predict_correction(model, run, dtype=torch.float64).data
    assert np.abs(ref2 - ref).max() > 1e-4
    np.testing.assert_allclose(got2, ref2, rtol=0, atol=1e-10 * np.abs(ref2).max())
    model.pair_table_min_edges = 1
    g, _ = build_graph(run, model.layout, dtype=torch.float64)
    delta, _spin = model(g)
    (grad,) = torch.autograd.grad(delta.pow(2).sum(), [model.pair_tp.weight])
    assert grad.abs().max() > 0


def test_shift_separated_loss_ignores_a_rigid_shift_and_weighs_it_apart(tmp_path, tiny_dataset):
    """With w_shift set, adding c·S to the predicted ΔH (a rigid shift of every band) leaves the
    real-space and k-space terms unchanged and costs w_shift·|μ| instead; without it, the loss grows
    with the shift. Training and validation run with it and log the shift."""
    from nextham_dft.model.train import load_items, step_loss

    cfg = TrainConfig(data=str(tiny_dataset), model=SMALL, k_per_structure=2, w_kspace=0.5, w_window=0.5, w_shift=0.1)
    model = _random_model(SMALL).float()
    items = load_items(str(tiny_dataset), None, cfg, model.layout, seed=0)[:2]

    class Shifted(torch.nn.Module):
        def __init__(self, c: float) -> None:
            super().__init__()
            self.c, self.anchor = c, torch.nn.Parameter(torch.zeros(()))

        def forward(self, g):
            delta, spin = model(g)
            return delta + self.c * g.s * g.mask, spin

    def parts(c: float, **kw) -> dict:
        _, p = step_loss(Shifted(c), items, dataclasses.replace(cfg, **kw))
        return p

    for key in ("real", "kspace", "window"):
        a, b = parts(0.0, w_shift=0.1)[key], parts(0.3, w_shift=0.1)[key]
        assert abs(a - b) <= 2e-3 * abs(a), key
    mu0, mu3 = parts(0.0, w_shift=0.1)["shift"], parts(3.0, w_shift=0.1)["shift"]  # mean |μ| / target_scale
    assert mu3 >= 3.0 / SMALL.target_scale - mu0 - 1e-3 and mu3 > mu0
    assert parts(3.0, w_shift=None)["real"] > 2 * parts(0.0, w_shift=None)["real"]  # the default loss does see the shift
    p = _config(tmp_path, tiny_dataset, epochs=1, w_shift=0.05, select_on="loss")
    p.write_text(p.read_text().replace("val_fraction: 0.0", "val_fraction: 0.34"))
    res = CliRunner().invoke(main, ["train", str(p), "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    head, row = (tmp_path / "run" / "log.csv").read_text().splitlines()[:2]
    col = dict(zip(head.split(","), row.split(",")))
    assert float(col["shift"]) > 0 and 0 < float(col["val_shifted_mae_mev"]) <= float(col["val_mae_mev"]) + 1e-3
    p.write_text(p.read_text().replace("w_shift: 0.05", "w_shift: -1.0"))
    res = CliRunner().invoke(main, ["train", str(p), "--device", "cpu"])
    assert res.exit_code != 0 and "w_shift" in res.output + res.stderr


def test_metric_weighted_real_loss_weighs_entries_as_eval_does(tiny_dataset):
    """With ``real_weighting: metric`` the real-space loss of ΔH = 0 is eval's H(0) H MAE (stored half:
    on-site entries twice on the directed graph), and in a batch every structure weighs the same
    whatever its size; the default weighs every entry alike, so it differs on such a batch."""
    from nextham_dft.evaluation import evaluate
    from nextham_dft.model.graph import batch_graphs
    from nextham_dft.model.losses import metric_edge_weights, real_space_loss
    from nextham_dft.model.train import load_items, step_loss, structure_spans

    system = read_run(need(EXAMPLE))
    g, _ = build_graph(system, BasisLayout(), dtype=torch.float64)
    w = metric_edge_weights(g.onsite, g.mask, [slice(0, len(g.edge_src))])
    zero = torch.zeros_like(g.target)
    got = float(real_space_loss(zero, g.target, g.mask, 1.0, beta=1e-12, edge_weight=w))  # ≈ L1, eV
    want = evaluate(system, system.matrices["H0"])["h0"]["h_mae_mev"] * 1e-3
    assert got == pytest.approx(want, rel=1e-6)
    assert float(real_space_loss(zero, g.target, g.mask, 1.0, beta=1e-12)) != pytest.approx(want, rel=1e-3)

    cfg = TrainConfig(data=str(tiny_dataset), model=SMALL, k_per_structure=2, w_kspace=0.0)
    model = _random_model(SMALL).float()
    items = load_items(str(tiny_dataset), None, cfg, model.layout, seed=0)[:2]
    small = items[1].graph  # the second structure loses its off-site entries beyond the first 40 edges
    small.mask[40:] = small.mask[40:] * small.onsite[40:, None, None].to(small.mask.dtype)
    small.target = small.target * small.mask
    batch = batch_graphs([it.graph for it in items])
    spans = structure_spans(items)
    w = metric_edge_weights(batch.onsite, batch.mask, spans)
    for sl in spans:  # every structure sums to one
        assert float((w[sl] * batch.mask[sl].sum((1, 2))).sum()) == pytest.approx(1.0)
    pred = torch.zeros_like(batch.target)
    each = [float(real_space_loss(pred[sl], batch.target[sl], batch.mask[sl], 0.05, edge_weight=w[sl] * len(spans)))
            for sl in spans]
    both = float(real_space_loss(pred, batch.target, batch.mask, 0.05, edge_weight=w))
    assert both == pytest.approx(sum(each) / 2, rel=1e-6)
    real = {mode: step_loss(model, items, dataclasses.replace(cfg, real_weighting=mode))[1]["real"]
            for mode in ("entries", "metric")}
    assert abs(real["entries"] - real["metric"]) > 1e-3 * real["entries"]


def _grown_from_local(cfg: ModelConfig, system) -> tuple[HamiltonianCorrection, object]:
    """A model of ``cfg`` loaded from a random trace-feedback model that lacks cfg's zero-initialised
    extension, and that model's ΔH, which the grown model must reproduce exactly."""
    from nextham_dft.model.store import load_weights_into

    local = _random_model(dataclasses.replace(SMALL, trace_feedback=True))
    grown = HamiltonianCorrection(cfg).double()
    load_weights_into(grown, local.state_dict())
    base = predict_correction(local, system, dtype=torch.float64)
    assert predict_correction(grown, system, dtype=torch.float64).max_abs_diff(base) == 0.0
    return grown, base


def test_long_range_term_keeps_every_symmetry_and_fine_tunes_from_a_local_model():
    """long_range: the Ewald potential of learned charges shifts the shell potentials. The model stays
    equivariant (SOC run, rotations and inversion) and hermitian; a supercell's ΔH is the primitive
    cell's unfolded (the charges are neutralised per structure, which a supercell repeats); a local
    model loads into it unchanged, and the term then acts once its response moves; a graph without
    the Ewald operator is refused."""
    from nextham_dft.core.supercell import make_supercell

    from .test_dataset_and_supercell import supercell_of

    cfg = dataclasses.replace(SMALL, trace_feedback=True, long_range=True)
    system = read_run(need(DATA / "runs" / "t0045"))
    model = _random_model(cfg)
    predict = lambda s: predict_correction(model, s, dtype=torch.float64)  # noqa: E731
    assert_hamiltonian_equivariant(predict, system, n_rotations=1, rtol=1e-5)
    d = predict(system)
    hk = KAssembler(d, spinor=True)(np.random.default_rng(3).random((2, 3)))
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-12)

    p, s = read_run(need(DATA / "supercell" / "alp_prim_soc")), read_run(need(DATA / "supercell" / "alp_211_soc"))
    P, order = supercell_of(p, s)
    p.matrices = {**p.matrices, "dH": predict(p)}
    unfolded = make_supercell(p, P).matrices["dH"].permute_atoms(order)
    got = predict(s)
    assert unfolded.max_abs_diff(got) < 1e-8
    g, _ = build_graph(s, model.layout, dtype=torch.float64, long_range=True)
    assert float(g.ewald.abs().max()) > 1.0  # eV/e²: Al and P differ, so the charges and φ do too
    with torch.no_grad():
        model.ewald_response.zero_()
    assert predict(s).max_abs_diff(got) > 1e-4  # the term contributes to what was compared

    grown, base = _grown_from_local(cfg, system)
    with torch.no_grad():
        grown.ewald_response.fill_(0.05)
    assert predict_correction(grown, system, dtype=torch.float64).max_abs_diff(base) > 1e-4
    g, _ = build_graph(system, grown.layout, dtype=torch.float64)  # built without the operator
    with pytest.raises(ValueError, match="Ewald"):
        grown(g)


def _assert_symmetric_and_hermitian(model: HamiltonianCorrection, system) -> None:
    """The model's H(0) + ΔH is equivariant (two random rotations, inversion, permutations,
    translations) and hermitian at two random k-points."""
    predict = lambda s: predict_correction(model, s, dtype=torch.float64)  # noqa: E731
    assert_hamiltonian_equivariant(predict, system, n_rotations=2, rtol=1e-5)
    d = predict(system)
    hk = KAssembler(d, spinor=d.spin == "spinor")(np.random.default_rng(2).random((2, 3)))
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-12)


def _check_edge_specific_term(run: str, cfg: ModelConfig, out_module: str, max_len: float = np.inf) -> None:
    """Checks of a zero-initialised term that gives each edge a block of its own (``out_module``: the
    term's last, zero-initialised map). The model stays equivariant (rotations, inversion; SOC run
    too) and hermitian; a model without the term loads into it and predicts the same; once the term's
    weights move, the correction moves; and the term alone (the other heads silenced) gives the
    periodic images of one atom pair (those shorter than ``max_len`` Å) blocks that differ by more
    than a common factor, beyond what a per-pair feature could."""
    system = read_run(need(DATA / "runs" / run))
    model = _random_model(cfg)
    _assert_symmetric_and_hermitian(model, system)

    grown, base = _grown_from_local(cfg, system)
    with torch.no_grad():
        for p in getattr(grown, out_module).parameters():
            p.normal_(0, 0.3)
    assert predict_correction(grown, system, dtype=torch.float64).max_abs_diff(base) > 1e-4

    g, _ = build_graph(system, model.layout, dtype=torch.float64)
    with torch.no_grad():
        for mod in (model.edge_lin, model.pair_tp, model.potential.net[-1]):
            for p in mod.parameters():
                p.zero_()
        if model.cfg.trace_feedback:
            for p in list(model.trace_gate.net[-1].parameters()) + list(model.trace_potential.net[-1].parameters()):
                p.zero_()
        blocks, _ = model(g)
    off = ~g.onsite
    pair = off & (g.edge_src == g.edge_src[off][0]) & (g.edge_dst == g.edge_dst[off][0])
    pair = pair & (torch.linalg.norm(g.edge_vec, dim=1) < max_len)
    b = blocks[pair].reshape(int(pair.sum()), -1)
    assert len(b) > 1 and float(b.abs().max()) > 1e-6
    b = b / torch.linalg.norm(b, dim=1, keepdim=True)
    assert float(torch.linalg.norm(b[1:] - b[:1], dim=1).max()) > 1e-2


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_edge_messages_keep_every_symmetry_and_tell_periodic_images_apart(run):
    """edge_messages: h_j ⊗ Y(r̂_ij) feeds the blocks (checks: ``_check_edge_specific_term``)."""
    _check_edge_specific_term(run, dataclasses.replace(SMALL, trace_feedback=True, edge_messages=True), "edge_out")


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_bond_environment_term_keeps_every_symmetry_and_sees_the_bonds_surroundings(run):
    """bond_env: m_e = Σ_k w(|r_ik|, |r_jk|, Z_k) Y(r̂_ik), coupled with Y(r̂_ij), feeds the blocks
    (checks: ``_check_edge_specific_term``; images within 6 Å, inside the term's reach)."""
    cfg = dataclasses.replace(SMALL, trace_feedback=True, bond_env=True, r_env=3.5, env_channels=2)
    _check_edge_specific_term(run, cfg, "env_out", max_len=6.0)


def test_plain_einsum_codegen_computes_the_same_network(monkeypatch):
    """Networks are built without opt_einsum's contraction-order search (2 of the 3 s of loading the
    bundled model); the map is the same as with e3nn's default code to float32 rounding, on the fused
    path and on e3nn's own (above fused_max_rows), and e3nn's defaults are restored afterwards."""
    import contextlib

    import e3nn

    from nextham_dft.model import network

    before = e3nn.get_optimization_defaults()
    torch.manual_seed(0)
    plain = HamiltonianCorrection(SMALL)
    assert e3nn.get_optimization_defaults() == before
    with torch.no_grad():  # a fresh network outputs zero (its output maps start at zero)
        for p in plain.parameters():
            p.normal_(0.0, 0.2)
    monkeypatch.setattr(network, "plain_einsum_codegen", contextlib.nullcontext)
    searched = HamiltonianCorrection(SMALL)
    searched.load_state_dict(plain.state_dict())
    g, _ = build_graph(read_run(EXAMPLE), plain.layout)
    for rows in (plain.fused_max_rows, 0):  # the fused products, then e3nn's generated code throughout
        plain.fused_max_rows = searched.fused_max_rows = rows
        with torch.no_grad():
            a, b = plain(g)[0], searched(g)[0]
        assert a.abs().max() > 1e-4 and torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    with pytest.raises(RuntimeError), network.plain_einsum_codegen():
        raise RuntimeError
    assert e3nn.get_optimization_defaults() == before


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_density_features_keep_every_symmetry_and_fine_tune_from_a_model_without_them(run):
    """density_features: the zeroth-step density matrix (H(0)'s own occupied states, a matrix function
    of H(0) and S) feeds the blocks, the edge scalars and the nodes. It holds the run's electrons and is
    hermitian; the model stays equivariant (rotations, inversion, permutations, translations; SOC run
    too) and hermitian; a model without the term loads into it and predicts the same, and the
    correction moves once the term's weights do; a graph without the density is refused."""
    from nextham_dft.core.density import electron_count
    from nextham_dft.model.graph import zeroth_step_density

    system = read_run(need(DATA / "runs" / run))
    dm = zeroth_step_density(system)
    assert electron_count(dm, system.matrices["S"]) == pytest.approx(system.nelec, abs=1e-6)
    cfg = dataclasses.replace(SMALL, trace_feedback=True, density_features=True)
    model = _random_model(cfg)
    _assert_symmetric_and_hermitian(model, system)

    grown, base = _grown_from_local(cfg, system)
    for name in ("dm_edge", "dm_node", "dm_scalars"):
        trial = HamiltonianCorrection(cfg).double()
        trial.load_state_dict(grown.state_dict())
        with torch.no_grad():
            for p in getattr(trial, name).parameters():
                p.normal_(0, 0.3)
        assert predict_correction(trial, system, dtype=torch.float64).max_abs_diff(base) > 1e-4, name
    g, _ = build_graph(system, grown.layout, dtype=torch.float64)  # built without the density
    with pytest.raises(ValueError, match="density"):
        grown(g)


@pytest.mark.parametrize("run", ["s0221", "t0045"])
def test_local_potential_head_adds_the_matrix_of_its_potential_and_keeps_every_symmetry(run, monkeypatch):
    """local_potential: per-atom coefficients c_km of Gaussians in ΔV(r) add Σ c_km ⟨φ_i|g_m(k)|φ_j⟩.
    With the head's output fixed to a constant c_m, the change of the prediction is exactly that sum over
    the grid integrals of core.potential (every edge, both halves; spin-free part only for SOC). The
    model stays equivariant (rotations, inversion; SOC run too) and hermitian; a model without the head
    loads into it and predicts the same; the big-cell path (ΔV's matrix integrated once per network)
    predicts the same; a graph without the integrals is refused."""
    from nextham_dft.core.potential import potential_integrals
    from nextham_dft.model.graph import graph_options

    system = read_run(need(DATA / "runs" / run))
    cfg = dataclasses.replace(SMALL, trace_feedback=True, local_potential=(0.4, 1.5), potential_spacing=0.3)
    model = _random_model(cfg)
    _assert_symmetric_and_hermitian(model, system)

    grown, base = _grown_from_local(cfg, system)
    c = torch.tensor([0.7, -0.2], dtype=torch.float64)
    with torch.no_grad():
        grown.local_pot.net[-1].bias.copy_(c)
    moved = predict_correction(grown, system, dtype=torch.float64)
    h0 = system.matrices["H0"]
    v = potential_integrals(system, cfg.local_potential, h0, spacing=cfg.potential_spacing)
    want = np.einsum("ekm,m->e", v, c.numpy())  # Σ_k Σ_m c_m V^(k,m), stored entries of H(0)
    diff = moved.aligned_to(h0).data - base.aligned_to(h0).data
    if h0.spin == "spinor":
        a, b = spinor_to_ab(diff)
        assert np.abs(b).max() < 1e-12
        diff = a
    assert np.abs(want).max() > 1e-2 and np.abs(diff - want).max() < 1e-10
    # big cells integrate ΔV's matrix once per network instead: the same prediction
    from nextham_dft.model import predict as predict_module

    monkeypatch.setattr(predict_module, "POTENTIAL_PAIRS_MAX_ATOMS", 0)
    assert predict_correction(grown, system, dtype=torch.float64).max_abs_diff(moved) < 1e-10
    g, _ = build_graph(system, grown.layout, dtype=torch.float64)  # built without the integrals
    with pytest.raises(ValueError, match="local-potential"):
        grown(g)
    assert graph_options(cfg)["potential"] == (0.4, 1.5)
