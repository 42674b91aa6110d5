#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install recblr for development: training
# (torch, triton, onnx), the dev tools and every extra the tests use (Valkey, Spark, Dask, Ray, ANN).
# Sourced by scripts/test.sh and scripts/quickstart.sh; VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$root/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import recblr, torch, onnx, onnxruntime, orjson, pytest, redis, pyspark, dask.distributed, ray.data, schemathesis" >/dev/null 2>&1; then
    python -m pip install -q --upgrade pip
    # torch first and pinned, so the resolver does not pick a multi-GB build by itself;
    # RECBLR_TORCH overrides (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
    # shellcheck disable=SC2086
    python -m pip install -q ${RECBLR_TORCH:-torch==2.13.0}
    # ann: the catalog extra (pip ignores it where this version does not define it)
    python -m pip install -q -e "$root[train,dev,redis,spark,dask,ray,ann]"
fi
