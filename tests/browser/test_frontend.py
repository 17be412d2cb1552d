"""The pack in ComfyUI's real web frontend, in headless Chromium: its editor extension loads and keeps MMDiT
Empty Latent's width and height on the chosen preset, and every shipped UI workflow, loaded by the
frontend and turned back into a prompt by it, is exactly its API twin (the file users share is the one
the tests run), and saved again by it, is the shipped file's widget values and links.

Needs what scripts/setup_browser_tests.sh prepares for a ComfyUI checkout (COMFYUI_PATH): the frontend
version that release pins, playwright-core and Chromium; skipped without them.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "comfyui"))

from comfy_harness import REPO, ComfyServer, comfyui_path  # noqa: E402

from comfyui_mmdit.tools.workflow_ui import ui_twin  # noqa: E402

PLAYWRIGHT_DIR = REPO / ".cache" / "playwright"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.api.json"))


def frontend_root(comfyui: Path) -> Path | None:
    """The static files of the frontend version the ComfyUI checkout pins, as the set-up script unpacks them."""
    for line in (comfyui / "requirements.txt").read_text().splitlines():
        if line.startswith("comfyui-frontend-package=="):
            static = REPO / ".cache" / "frontend" / line.split("==")[1].strip() / "static"
            return static if (static / "index.html").is_file() else None
    return None


@pytest.fixture(scope="module")
def browser_server():
    comfyui = comfyui_path()
    missing = [what for what, ok in [
        ("COMFYUI_PATH", comfyui is not None),
        ("the pinned frontend", comfyui is not None and frontend_root(comfyui) is not None),
        ("node", shutil.which("node") is not None),
        ("playwright-core", (PLAYWRIGHT_DIR / "node_modules" / "playwright-core").is_dir()),
        ("Chromium", Path(CHROMIUM).is_file()),
    ] if not ok]
    if missing:
        pytest.skip(f"browser tests need {', '.join(missing)}: run scripts/setup_browser_tests.sh COMFYUI_PATH")
    server = ComfyServer(front_end_root=frontend_root(comfyui))
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    for name in ("hunyuanimage2.1_bf16.safetensors", "hunyuanimage2.1_distilled_bf16.safetensors"):
        write_tiny_component("diffusion_models", server.base_dir / "models" / "diffusion_models" / name)
    server.start()
    yield server
    server.stop()


def frontend_run(server, *ui_workflows: Path, prefill_model: str = "") -> dict:
    result = subprocess.run(["node", str(HERE / "frontend_check.mjs"), server.url, *map(str, ui_workflows)],
                            capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, PLAYWRIGHT_DIR=str(PLAYWRIGHT_DIR), CHROMIUM=CHROMIUM,
                                     PREFILL_MODEL=prefill_model))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Core nodes whose frontend adds display widgets that are not in the node's definition and differ by release:
# PreviewAny shows its text in a widget (not saved), and from 1.3x has a Markdown/Plaintext switch (saved);
# 1.35 also puts both into the prompt, where ComfyUI drops inputs a node does not declare
# (execution.get_input_data), so they change nothing.
FRONTEND_DISPLAY_INPUTS = {"PreviewAny": {"preview", "previewMode"}}


def assert_prompt_is(prompt: dict, api: dict) -> None:
    assert set(prompt) == set(api)
    for node_id, node in api.items():
        assert prompt[node_id]["class_type"] == node["class_type"]
        display = FRONTEND_DISPLAY_INPUTS.get(node["class_type"], set())
        assert {k: v for k, v in prompt[node_id]["inputs"].items() if k not in display} == node["inputs"], node_id


def assert_saved_as_shipped(saved: dict, ui: dict) -> None:
    """The frontend, saving the workflow it loaded, writes each node's widget values and link slots as the
    shipped UI file has them (LoadImage's [file, "image"], a seed's control mode, optional image inputs
    left open, a widget fed by a link: the prompt from a String primitive or the prompt enhancer)."""
    assert set(saved) == {str(node["id"]) for node in ui["nodes"]}
    for node in ui["nodes"]:
        got = saved[str(node["id"])]
        if node["type"] in FRONTEND_DISPLAY_INPUTS:
            # Nothing of ours; the frontend saves its display widgets' state (none, or the text switch: off).
            assert node["widgets_values"] == [] and all(v in (None, False) for v in got["widgets_values"])
        else:
            assert got["widgets_values"] == node["widgets_values"], node["type"]
        # Every input slot but the widgets' own unlinked sockets (which the frontend adds itself).
        slots = [{k: slot[k] for k in ("name", "type", "link")} for slot in got["inputs"]
                 if not slot["widget"] or slot["link"] is not None]
        assert slots == [{k: slot[k] for k in ("name", "type", "link")} for slot in node["inputs"]], node["type"]
        assert [slot["name"] for slot in got["inputs"] if slot["widget"] and slot["link"] is not None] == \
            [slot["name"] for slot in node["inputs"] if "widget" in slot], node["type"]


@pytest.mark.parametrize("api_path", API_WORKFLOWS, ids=lambda p: p.name)
def test_shipped_workflow_and_editor_extension_in_the_real_frontend(browser_server, api_path):
    seen = frontend_run(browser_server, ui_twin(api_path))
    assert "ComfyUI-MMDiT.EmptyLatentPresets" in seen["extensions"]
    assert seen["latentDefaults"] == ["1:1", 1328, 1328]
    assert seen["latentAfterPreset"] == ["16:9", 1664, 928]  # picking a preset sets its size
    assert seen["latentAfterEdit"] == ["custom (width x height)", 1024, 928]  # editing the size leaves it
    assert_prompt_is(seen["prompts"][0], json.loads(api_path.read_text()))
    assert_saved_as_shipped(seen["saved"][0], json.loads(ui_twin(api_path).read_text()))
    assert not [e for e in seen["pageErrors"] if "mmdit" in e.lower()], seen["pageErrors"]


def test_a_workflow_saved_before_the_sampler_changed_opens_with_the_values_it_meant(browser_server):
    """The shipped workflow as saved before: the sampler had a shift widget and 0 meant the family's value
    (steps, CFG, shift; scheduler 'family default'), and the latent showed 1328x1328 beside its 16:9 preset.
    Opened now, it is the same prompt as the shipped workflow of today (which makes the same image)."""
    seen = frontend_run(browser_server, HERE / "legacy_qwen_image_t2i.json")
    assert_prompt_is(seen["prompts"][0], json.loads((REPO / "workflows" / "api" / "qwen_image_t2i.api.json").read_text()))


def test_picking_a_model_prefills_the_sampler_with_its_official_values(browser_server):
    """The base workflow (50 steps, 3.5); picking the distilled model sets its sampler to 8 steps, 3.25."""
    base = ui_twin(REPO / "workflows" / "api" / "hunyuanimage21_t2i.api.json")
    seen = frontend_run(browser_server, base, prefill_model="hunyuanimage2.1_distilled_bf16.safetensors")
    assert seen["prompts"][0]["6"]["inputs"]["steps"] == 50
    assert seen["prefilled"] == {"steps": 8, "cfg": 3.25}
    assert not [e for e in seen["pageErrors"] if "mmdit" in e.lower()], seen["pageErrors"]
