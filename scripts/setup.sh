#!/usr/bin/env bash
# Creates .venv with the pack's dependencies; --test adds the pinned test/reference set-up.
# torch is pinned to 2.13.0 (the CPU build on these machines); a loose "torch" would pull CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

echo "installing torch==2.13.0 and the pack's requirements into $VENV"
pip install "torch==2.13.0"
pip install -r requirements.txt "numpy" "Pillow" --constraint <(echo "torch==2.13.0")
if [ "${1:-}" = "--test" ]; then
    echo "installing the pinned test requirements"
    pip install -r requirements-test.txt --constraint <(echo "torch==2.13.0")
fi
echo "ready: $VENV"
