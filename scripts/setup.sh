#!/usr/bin/env bash
# Creates .venv with the pack's dependencies; --test adds the pinned test/reference set-up.
#
# torch: a torch already in .venv is kept (a GPU user installs a CUDA build first, see README), except for
# --test, which pins torch 2.13.0 (the CPU build on the project's machines). With no torch in .venv,
# TORCH_INDEX_URL picks the wheel index (e.g. https://download.pytorch.org/whl/cu128); without it,
# torch==2.13.0 comes from the default index. A loose "torch" would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
installed_torch() { "$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null || true; }

current="$(installed_torch)"
if [ "${1:-}" = "--test" ]; then
    echo "installing $TORCH_PIN (pinned for the tests)"
    pip install "$TORCH_PIN"
elif [ -n "$current" ]; then
    echo "keeping the torch already in $VENV: $current"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "installing torch from $TORCH_INDEX_URL"
    pip install torch --index-url "$TORCH_INDEX_URL"
else
    echo "installing $TORCH_PIN"
    pip install "$TORCH_PIN"
fi
torch_now="torch==$(installed_torch | cut -d+ -f1)"
pip install -r requirements.txt "numpy" "Pillow" --constraint <(echo "$torch_now")
if [ "${1:-}" = "--test" ]; then
    echo "installing the pinned test requirements"
    pip install -r requirements-test.txt --constraint <(echo "$TORCH_PIN")
fi
echo "ready: $VENV (torch $(installed_torch))"
