"""Test set-up: the repository root is the node pack; it is imported as the package `comfyui_mmdit`
(the name ComfyUI would give it is derived from its folder, which need not be a valid identifier)."""

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle torch threads busy-wait otherwise

ROOT = Path(__file__).resolve().parents[1]
if "comfyui_mmdit" not in sys.modules:
    package = types.ModuleType("comfyui_mmdit")
    package.__path__ = [str(ROOT)]  # subpackages import without running the ComfyUI entry point
    package.__file__ = str(ROOT / "__init__.py")
    sys.modules["comfyui_mmdit"] = package
