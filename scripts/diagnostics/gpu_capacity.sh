#!/usr/bin/env bash
# Capacity probes on one GPU, all at once (session 19): base / wide / extra-wide networks, and wide with
# bond_env or three layers, fitted to 16 and 32 training structures for the same wall-clock time.
# A step of these networks is bound by kernel launches, so eight processes share the GPU well.
# Usage: [DEVICE=cpu] scripts/diagnostics/gpu_capacity.sh DATA.h5 IDS16.txt IDS32.txt OUT_DIR [MINUTES]
set -u
data=$1; ids16=$(cat "$2"); ids32=$(cat "$3"); out=$4; minutes=${5:-6.5}
cfg=scripts/parallel_recipe/member0_stageA.yaml
wide="hidden_irreps=32x0e+8x0o+8x1o+8x1e+8x2e+8x2o+4x3o+4x3e mlp_hidden=128 embed_dim=32"
xwide="hidden_irreps=64x0e+16x0o+16x1o+16x1e+16x2e+16x2o+8x3o+8x3e mlp_hidden=256 embed_dim=32"
probe() {  # name, ids, model overrides…
  local name=$1 ids=$2; shift 2
  OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 python3 scripts/diagnostics/capacity_probe.py "$cfg" "$data" \
    --ids $ids --steps 100000 --minutes "$minutes" --every 100 --device "${DEVICE:-cuda}" ${1:+--set "$@"} \
    >"$out/$name.out" 2>&1 &
}
probe base16 "$ids16"
probe base32 "$ids32"
probe wide16 "$ids16" $wide
probe wide32 "$ids32" $wide
probe xwide16 "$ids16" $xwide
probe xwide32 "$ids32" $xwide
probe wideenv16 "$ids16" $wide bond_env=true
probe wide3l16 "$ids16" $wide num_layers=3
wait
