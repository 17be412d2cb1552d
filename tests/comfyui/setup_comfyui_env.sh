#!/usr/bin/env bash
# Prepares the test venv for ComfyUI integration tests: ComfyUI's runtime requirements (torch stays the
# pinned CPU build) and a torchvision shim (torchvision has no CPU build matching torch 2.13 here; ComfyUI
# only needs it to import). Idempotent: one marker per requirements file (several ComfyUI releases share
# the venv) and one for the shim skip work already done.
#   usage: bash tests/comfyui/setup_comfyui_env.sh [COMFYUI_PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."

COMFYUI_PATH="${1:-${COMFYUI_PATH:-}}"
if [ -z "$COMFYUI_PATH" ] || [ ! -f "$COMFYUI_PATH/main.py" ]; then
    echo "COMFYUI_PATH must point at a ComfyUI checkout (main.py not found in '${COMFYUI_PATH}')" >&2
    exit 1
fi
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
SHIM=".cache/torchvision_shim"
TORCHVISION_VERSION="0.28.0"
MARKERS=".cache/comfyui_env"
REQUIREMENTS_MARKER="$MARKERS/requirements-$(sha1sum "$COMFYUI_PATH/requirements.txt" | cut -c1-12).done"
SHIM_MARKER="$MARKERS/torchvision-shim-$TORCHVISION_VERSION.done"
mkdir -p "$MARKERS"
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

if [ -f "$REQUIREMENTS_MARKER" ]; then
    echo "ComfyUI's requirements: already installed ($COMFYUI_PATH/requirements.txt)"
else
    echo "installing ComfyUI's requirements into $VENV (torch stays 2.13.0; no torchvision/torchaudio, no frontend)"
    # The web frontend, templates and docs packages only serve the browser UI; the API works without them.
    grep -v -E '^\s*(#|$)|^(torch|torchvision|torchaudio)\b|frontend-package|workflow-templates|embedded-docs' \
        "$COMFYUI_PATH/requirements.txt" > "$MARKERS/requirements.txt"
    pip install -r "$MARKERS/requirements.txt" --constraint <(echo "torch==2.13.0")
    # Some of them (kornia, spandrel) pull a torchvision that cannot load beside this torch: remove it.
    pip uninstall -y torchvision >/dev/null 2>&1 || true
    touch "$REQUIREMENTS_MARKER"
fi

if [ -f "$SHIM_MARKER" ] && [ -d "$SHIM/torchvision" ]; then
    echo "ComfyUI test environment: ready"
    exit 0
fi
echo "building the torchvision shim in $SHIM (pure-Python torchvision $TORCHVISION_VERSION, compiled parts removed)"
rm -rf "$SHIM" .cache/torchvision_wheel && mkdir -p "$SHIM" .cache/torchvision_wheel
pip download --no-deps --only-binary=:all: "torchvision==$TORCHVISION_VERSION" -d .cache/torchvision_wheel
"$PY" - "$SHIM" .cache/torchvision_wheel <<'PYEOF'
import pathlib, sys, zipfile
shim, wheels = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(wheels.glob("torchvision-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("torchvision/") and not name.endswith(".so"):
            z.extract(name, shim)
meta = shim / "torchvision" / "_meta_registrations.py"
text = meta.read_text()
for op in ("nms", "qnms"):  # fake kernels for operators the removed compiled library would define
    text = text.replace(f'@torch.library.register_fake("torchvision::{op}")',
                        f"@(lambda f: f)  # shim: torchvision::{op} is not compiled here")
meta.write_text(text)
PYEOF
PYTHONPATH="$SHIM" "$PY" -c "import torchvision; print('torchvision shim imports:', torchvision.__version__)"
touch "$SHIM_MARKER"
echo "ComfyUI test environment: ready"
