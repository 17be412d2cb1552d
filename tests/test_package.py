"""The pack's shape: the core imports without ComfyUI, and the ComfyUI entry point exports every node."""

import subprocess
import sys

from helpers import ROOT

BOOTSTRAP = (
    "import sys, types; p = types.ModuleType('comfyui_mmdit'); p.__path__ = [{root!r}]; "
    "sys.modules['comfyui_mmdit'] = p; "
)


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", BOOTSTRAP.format(root=str(ROOT)) + code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_core_packages_import_without_comfyui():
    out = _run(
        "import comfyui_mmdit.model_defs.families, comfyui_mmdit.loaders.diffusion_model, "
        "comfyui_mmdit.loaders.vae, comfyui_mmdit.loaders.text_encoder; "
        "print(sorted(m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m == 'folder_paths'))"
    )
    assert out.strip() == "[]"


def test_entry_point_exports_every_node_with_a_display_name():
    out = _run(
        "import importlib.util; spec = importlib.util.spec_from_file_location('comfyui_mmdit', "
        f"{str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}]); "
        "m = importlib.util.module_from_spec(spec); sys.modules['comfyui_mmdit'] = m; spec.loader.exec_module(m); "
        "print(sorted(m.NODE_CLASS_MAPPINGS)); print(sorted(m.NODE_DISPLAY_NAME_MAPPINGS)); print(m.WEB_DIRECTORY)"
    )
    classes, display, web = out.strip().splitlines()
    assert sorted(p.name for p in (ROOT / web).glob("*.js")) == ["mmdit.js"]  # ComfyUI serves this folder
    assert classes == display
    for name in ("MMDiTModelLoader", "MMDiTTextEncoderLoader", "MMDiTTextEncode", "MMDiTEmptyLatent", "MMDiTSampler",
                 "MMDiTVAELoader", "MMDiTVAEDecode", "MMDiTVAEEncode"):
        assert f"'{name}'" in classes
