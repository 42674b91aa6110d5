#!/usr/bin/env bash
# The checks that need a CUDA GPU: the Triton kernel tests compiled for the device (no
# interpreter), the scan benchmark with the triton backend, one ML-1M-shaped training epoch,
# and the kernel peers (when accelerated-scan and fla are installed). CI never runs this.
#   [PYTHON=python3] bash scripts/gpu-check.sh [RESULTS_DIR]     (default benchmarks/results)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
cd "$root"
py="${PYTHON:-python3}"  # the interpreter that has torch, triton and recblr installed
"$py" - <<'PY' || exit 2
import sys
try:
    import torch
    import triton  # noqa: F401
    import recblr.kernels  # noqa: F401
except ImportError as e:
    sys.exit(f"gpu-check: {e.name} is not importable with {sys.executable}; set PYTHON to the right interpreter")
if not torch.cuda.is_available():
    sys.exit("gpu-check: no CUDA device visible to torch")
PY
unset TRITON_INTERPRET
"$py" -m pytest tests/kernels -q -p no:cacheprovider
"$py" benchmarks/scan.py --device cuda --repeats 20 --out "$out/scan_cuda.json"
"$py" benchmarks/gpu_epoch.py --device cuda --out "$out/gpu_epoch"
if "$py" -c "import accelerated_scan, fla" 2>/dev/null; then
    "$py" benchmarks/scan_peers.py --device cuda --name "$out/scan_peers"
else
    echo "gpu-check: accelerated-scan or flash-linear-attention missing (pip install 'recblr[peers]'); scan_peers.py not run" >&2
fi
