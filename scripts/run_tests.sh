#!/usr/bin/env bash
# Sets up .venv (pinned CPU torch, diffusers as reference) and runs every test.
# ComfyUI integration tests run when COMFYUI_PATH points at a ComfyUI checkout (or ../ComfyUI exists);
# without one they are left out, and the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

if [ -z "${COMFYUI_PATH:-}" ] && [ -f ../ComfyUI/main.py ]; then
    COMFYUI_PATH="$(cd ../ComfyUI && pwd)"
fi
selection=(tests)
if [ -n "${COMFYUI_PATH:-}" ]; then
    export COMFYUI_PATH
    echo "ComfyUI integration tests: on ($COMFYUI_PATH)"
    bash tests/comfyui/setup_comfyui_env.sh "$COMFYUI_PATH"
else
    echo "ComfyUI integration and browser tests: not run (set COMFYUI_PATH to a ComfyUI checkout to run them)"
    selection+=(--ignore=tests/comfyui --ignore=tests/browser)
fi

export OMP_WAIT_POLICY=PASSIVE  # idle torch threads busy-wait otherwise and stall the run
.venv/bin/python -m pytest -q -ra "${selection[@]}" "$@"
