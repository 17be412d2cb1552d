#!/usr/bin/env bash
# Prepares the browser tests (tests/browser) for one ComfyUI checkout: the web frontend version it pins
# (comfyui-frontend-package from PyPI, unpacked into .cache/frontend/<version>), playwright-core (npm,
# into .cache/playwright) and Debian's Chromium. Idempotent.
#   usage: bash scripts/setup_browser_tests.sh COMFYUI_PATH
set -euo pipefail
cd "$(dirname "$0")/.."

COMFYUI_PATH="${1:-${COMFYUI_PATH:-}}"
if [ -z "$COMFYUI_PATH" ] || [ ! -f "$COMFYUI_PATH/requirements.txt" ]; then
    echo "usage: bash scripts/setup_browser_tests.sh COMFYUI_PATH (a ComfyUI checkout)" >&2
    exit 1
fi
version="$(sed -n 's/^comfyui-frontend-package==\([^ ]*\).*/\1/p' "$COMFYUI_PATH/requirements.txt")"
if [ -z "$version" ]; then
    echo "$COMFYUI_PATH/requirements.txt pins no comfyui-frontend-package version" >&2
    exit 1
fi

frontend=".cache/frontend/$version"
if [ ! -f "$frontend/static/index.html" ]; then
    echo "fetching ComfyUI's web frontend $version"
    rm -rf "$frontend" && mkdir -p "$frontend/wheel"
    .venv/bin/python -m pip --disable-pip-version-check -q download --no-deps \
        "comfyui-frontend-package==$version" -d "$frontend/wheel"
    .venv/bin/python -m zipfile -e "$frontend"/wheel/*.whl "$frontend/unpacked"
    mv "$frontend/unpacked/comfyui_frontend_package/static" "$frontend/static"
    rm -rf "$frontend/wheel" "$frontend/unpacked"
fi

if [ ! -d .cache/playwright/node_modules/playwright-core ]; then
    echo "installing playwright-core into .cache/playwright"
    mkdir -p .cache/playwright
    (cd .cache/playwright && npm init -y >/dev/null && npm install --no-audit --no-fund -q playwright-core@1)
fi

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "installing Debian's chromium"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null; else sudo apt-get install -y -q chromium >/dev/null; fi
fi
echo "browser tests: ready (frontend $version)"
