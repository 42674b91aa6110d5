#!/usr/bin/env bash
# Install what is needed, then lint and run the whole test suite (CPU only, < 10 minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$root/scripts/setup-env.sh"
cd "$root"
ruff check .
python -m pytest "$@"
