#!/usr/bin/env bash
# The README's test command (`make test`): set up everything, then ruff and the whole pytest suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup_env.sh
"$MOCHI_VENV/bin/ruff" check .
"$MOCHI_VENV/bin/ruff" format --check .
exec "$MOCHI_PY" -m pytest "$@"
