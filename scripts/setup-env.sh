#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install recblr with its dev tools.
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
if ! python -c "import recblr, torch, onnxruntime, starlette, orjson, pytest" >/dev/null 2>&1; then
    python -m pip install -q --upgrade pip
    # torch first and pinned, so the resolver does not pick a multi-GB build by itself;
    # RECBLR_TORCH overrides (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
    # shellcheck disable=SC2086
    python -m pip install -q ${RECBLR_TORCH:-torch==2.13.0}
    python -m pip install -q -e "$root[dev]"
fi
