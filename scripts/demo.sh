#!/usr/bin/env bash
# The README's main-job command (`make demo`): set up everything, start the real ComfyUI with this pack on
# 127.0.0.1:8188 (models from ./models or $MOCHI_MODELS), and run the demo driver (scripts/demo.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MOCHI_NO_BROWSER=1 . scripts/setup_env.sh
exec "$MOCHI_PY" scripts/demo.py "$@"
