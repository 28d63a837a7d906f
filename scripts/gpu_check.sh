#!/bin/bash
# The CUDA checks and GPU benchmarks of a release, in one run (about 6 minutes on an H200):
#   tests/test_cuda.py, predict on cuda and cpu, inference scaling with the model on the GPU,
#   training speed on the GPU and on two CPU threads of the same machine.
# Needs the package installed (pip install -e .), ../shared beside the checkout (or the runs given
# below), and SUBSET.h5: a small training file (e.g. 16 structures of the recipe's dataset.h5).
# Results land in ${OUT:-gpu_check}/. Session 10 ran this (with the wheels pymatgen and spglib
# carried onto a machine that had none) and recorded benchmarks/results_*cuda*.txt.
set -u
OUT=${OUT:-gpu_check}
SUBSET=${1:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__, torch.cuda.get_device_name())"
echo "== tests/test_cuda.py"
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -5
echo "== predict on cuda and cpu"
for d in cuda cpu; do
  rm -rf "/tmp/nextham_pred_$d"
  timeout 120 python3 -m nextham_dft predict examples/abacus-si2 --out "/tmp/nextham_pred_$d" --device $d | head -2
  cp "/tmp/nextham_pred_$d/report.json" "$OUT/report_$d.json"
done
echo "== inference scaling, model on the GPU"
timeout 300 python3 benchmarks/inference_scaling.py --device cuda --cells 1 8 64 216 512 \
  --json "$OUT/inference_scaling_cuda.json" | tee "$OUT/inference_scaling_cuda.txt"
if [ -n "$SUBSET" ]; then
  echo "== training speed"
  timeout 120 python3 benchmarks/train_throughput.py --data "$SUBSET" --device cuda --epochs 6 --json "$OUT/tt_cuda.json"
  timeout 120 python3 benchmarks/train_throughput.py --data "$SUBSET" --device cpu --threads 2 --epochs 3 --json "$OUT/tt_cpu2.json"
fi
