"""The same code on CUDA: predictions equal the CPU's, symmetry holds there, training and torchrun (NCCL) run.

Every test here is skipped on a machine without a CUDA device (CI has none); they were run on an H100
(last: session 22, 11 passed, with the local-potential and descriptor-embedding tests).
"""

from __future__ import annotations

import json
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
from nextham_dft.model.config import ModelConfig, TrainConfig, dump_yaml
from nextham_dft.model.predict import predict_correction, predict_hamiltonian
from nextham_dft.model.store import bundled_model_path, load_model
from nextham_dft.testing import assert_hamiltonian_equivariant

from .conftest import DATA, EXAMPLE, need

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SMALL = ModelConfig(hidden_irreps="8x0e+2x0o+2x1o+2x1e+2x2e+2x2o+1x3o+1x3e", num_layers=1, mlp_hidden=16, embed_dim=4,
                    long_range=True)


@pytest.mark.parametrize("run", ["example", "soc"])
def test_bundled_model_on_cuda_equals_cpu(run):
    """float64: the GPU's ΔH is the CPU's to round-off; float32 (the default) to 1e-5 relative."""
    system = read_run(need(EXAMPLE) if run == "example" else need(DATA / "runs" / "t0045"))
    model, _ = load_model(bundled_model_path())
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        cpu = predict_correction(model, system, device="cpu", dtype=dtype)
        gpu = predict_correction(model, system, device="cuda", dtype=dtype)
        scale = max(np.abs(cpu.data).max(), 1e-3)
        assert gpu.max_abs_diff(cpu) < rtol * scale, (dtype, gpu.max_abs_diff(cpu), scale)


@pytest.mark.parametrize("run", ["example", "soc"])
def test_density_model_on_cuda_equals_cpu(run):
    """The bundled density model: its network on the GPU (float64) gives the CPU's H to round-off (the grid
    work stays on the CPU)."""
    from nextham_dft.model.density_predict import predict_density

    system = read_run(need(EXAMPLE) if run == "example" else need(DATA / "runs" / "t0045"))
    model, _ = load_model(bundled_model_path("density"))
    cpu = predict_density(model, system, "cpu").hamiltonian
    gpu = predict_density(model, system, "cuda").hamiltonian
    assert gpu.max_abs_diff(cpu) < 1e-9 * max(np.abs(cpu.data).max(), 1e-3)


@pytest.mark.parametrize("run", ["example", "soc"])
@pytest.mark.parametrize("deferred", [False, True])
def test_local_potential_model_on_cuda_equals_cpu(run, deferred, monkeypatch):
    """The bundled local-potential network on the GPU: the (edge, atom) integral contraction and, as in
    cells above POTENTIAL_PAIRS_MAX_ATOMS, ΔV's matrix integrated after the network, both equal the CPU's."""
    from nextham_dft.model import predict as predict_module

    if deferred:
        monkeypatch.setattr(predict_module, "POTENTIAL_PAIRS_MAX_ATOMS", 0)
    system = read_run(need(EXAMPLE) if run == "example" else need(DATA / "runs" / "t0045"))
    model, _ = load_model(bundled_model_path("local"))
    cpu = predict_correction(model, system, device="cpu", dtype=torch.float64)
    gpu = predict_correction(model, system, device="cuda", dtype=torch.float64)
    scale = max(np.abs(cpu.data).max(), 1e-3)
    assert gpu.max_abs_diff(cpu) < 1e-10 * scale, (gpu.max_abs_diff(cpu), scale)


def test_equivariance_on_cuda_soc():
    """Rotations, inversion and the spin-½ part of the SOC blocks, predicted on the GPU in float64."""
    system = read_run(need(DATA / "runs" / "t0045"))
    model, _ = load_model(bundled_model_path())
    assert_hamiltonian_equivariant(lambda s: predict_hamiltonian(model, s, device="cuda", dtype=torch.float64),
                                   system, n_rotations=2, rtol=1e-8)


def test_predict_cli_on_cuda(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(out), "--device", "cuda"])
    assert res.exit_code == 0, res.output + res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["device"].startswith("cuda")
    assert (out / "hamiltonian.h5").is_file()
    auto = tmp_path / "auto"  # the default, auto, picks the GPU
    res = CliRunner().invoke(main, ["predict", str(need(EXAMPLE)), "--out", str(auto)])
    assert res.exit_code == 0, res.output + res.stderr
    assert json.loads((auto / "report.json").read_text())["device"].startswith("cuda")


def _config(tmp_path: Path, data: Path) -> Path:
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), val_fraction=0.0, test_fraction=0.0, epochs=2,
                      batch_size=1, k_per_structure=2, budget_minutes=5, model=SMALL)
    p = tmp_path / "cfg.yaml"
    p.write_text(dump_yaml(cfg))
    return p


def test_training_on_cuda_saves_a_model_that_loads_on_cpu(tmp_path, tiny_dataset):
    res = CliRunner().invoke(main, ["train", str(_config(tmp_path, tiny_dataset)), "--device", "cuda"])
    assert res.exit_code == 0, res.output + res.stderr
    model, _ = load_model(tmp_path / "run" / "best.pt")
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["state"]["epoch"] == 2 and ck["state"]["steps"] > 0


def test_local_potential_and_descriptor_model_trains_on_cuda(tmp_path, tiny_dataset):
    """Training a model with the local-potential head and descriptor embeddings on the GPU: the
    integrals' cache, the head's parameters and the descriptor table move to the device and back."""
    import dataclasses

    model_cfg = dataclasses.replace(SMALL, local_potential=(0.5, 1.5), element_descriptors=True)
    cfg = TrainConfig(data=str(tiny_dataset), out_dir=str(tmp_path / "run"), val_fraction=0.0, test_fraction=0.0,
                      epochs=2, batch_size=1, k_per_structure=2, budget_minutes=5, model=model_cfg)
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    res = CliRunner().invoke(main, ["train", str(tmp_path / "cfg.yaml"), "--device", "cuda"])
    assert res.exit_code == 0, res.output + res.stderr
    model, _ = load_model(tmp_path / "run" / "best.pt")
    assert model.cfg.local_potential == (0.5, 1.5) and model.cfg.element_descriptors
    assert float(model.local_pot.net[-1].weight.detach().abs().max()) > 0  # the zero-initialised head has trained
    system = read_run(need(EXAMPLE))
    cpu = predict_correction(model, system, device="cpu", dtype=torch.float64)
    gpu = predict_correction(model, system, device="cuda", dtype=torch.float64)
    assert gpu.max_abs_diff(cpu) < 1e-10 * max(np.abs(cpu.data).max(), 1e-3)


def test_torchrun_uses_nccl_with_one_gpu_per_rank(tmp_path, tiny_dataset):
    """torchrun on CUDA: NCCL process group, the model on cuda:LOCAL_RANK, DDP with device_ids."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29541",
           "-m", "nextham_dft.model.train", str(_config(tmp_path, tiny_dataset)), "--max-steps", "2", "--device", "cuda"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    final = torch.load(tmp_path / "run" / "final_rank0.pt", map_location="cpu")
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["state"]["steps"] == 2
