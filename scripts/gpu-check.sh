#!/usr/bin/env bash
# The checks that need a CUDA GPU: the Triton kernel tests compiled for the device (no
# interpreter), then the scan benchmark with the triton backend. CI never runs this.
#   bash scripts/gpu-check.sh [RESULTS_DIR]     (default benchmarks/results)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
cd "$root"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
  || { echo "gpu-check: no CUDA device visible" >&2; exit 2; }
unset TRITON_INTERPRET
python -m pytest tests/kernels -q -p no:cacheprovider
python benchmarks/scan.py --device cuda --repeats 20 --out "$out/scan_cuda.json"
