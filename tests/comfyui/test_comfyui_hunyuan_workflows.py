"""The shipped HunyuanImage 2.1 workflows with the refine stage in a real ComfyUI server, through /prompt on
tiny files under Comfy-Org's names (tests/comfyui/conftest.py), at 64x96 with 2 base and 2 refiner steps:

* hunyuanimage21_t2i: one String (Multiline) primitive feeds MMDiT Text Encode and MMDiT Refiner; the
  refined image is saved, the base image previewed; changing only the refiner's prompt changes the refined
  image and leaves the base image as it was (the refiner reads its prompt);
* hunyuanimage21_full: MMDiT Prompt Enhancer's rewrite (HunyuanImage 2.1's reprompt folder as users place
  it) feeds both stages and is shown by ComfyUI's PreviewAny, the reasoning too; typed by hand into the
  t2i workflow, that text gives the same images, so the STRING is what both stages read.
"""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT

API = ROOT / "workflows" / "api"
ENHANCER = "HunyuanImage-2.1/reprompt"


def shipped(name: str) -> dict:
    workflow = json.loads((API / f"{name}.api.json").read_text())
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "MMDiTEmptyLatent":
            inputs.update(aspect="custom (width x height)", width=64, height=96)
        if node["class_type"] in ("MMDiTSampler", "MMDiTRefiner"):
            inputs.update(steps=2)  # tiny random models: a pipeline check
        if node["class_type"] == "MMDiTPromptEnhancer":
            inputs.update(max_new_tokens=12)
    return workflow


def image(server, entry: dict, node_id: str) -> np.ndarray:
    """The one image an output node (SaveImage: output/, PreviewImage: temp/) of a finished prompt wrote."""
    (saved,) = entry["outputs"][node_id]["images"]
    path = server.base_dir / saved["type"] / saved.get("subfolder", "") / saved["filename"]
    return np.asarray(Image.open(path))


def run(server, workflow: dict) -> dict:
    return server.wait_for(server.queue_prompt(workflow), timeout=300)


@pytest.fixture(scope="module")
def enhancer_folder(comfy_server):
    """HunyuanImage 2.1's reprompt folder as users place it: the release's reprompt/ under
    models/prompt_enhancers/HunyuanImage-2.1/ (a tiny Hunyuan-dense chat model with its tokenizer)."""
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    return write_tiny_component("prompt_enhancers", comfy_server.base_dir / "models" / "prompt_enhancers" / ENHANCER)


def test_base_then_refiner_workflow_runs(comfy_server):
    workflow = shipped("hunyuanimage21_t2i")
    entry = run(comfy_server, workflow)
    refined, base = image(comfy_server, entry, "9"), image(comfy_server, entry, "13")
    assert refined.shape == base.shape == (96, 64, 3)
    assert entry["outputs"]["9"]["images"][0]["type"] == "output" and entry["outputs"]["13"]["images"][0]["type"] == "temp"
    assert "HunyuanImage 2.1 refiner: 2 steps, guidance 3.50, conditioning noise 0.25, 64x96" in comfy_server.log_text()
    assert not np.array_equal(refined, base)  # the refiner changed the image

    # The refiner's own prompt, changed alone (typed into its widget instead of the shared primitive): the base
    # image is the same, the refined one is not.
    workflow["14"]["inputs"]["prompt"] = workflow["10"]["inputs"]["value"] + " at night"
    other = run(comfy_server, workflow)
    assert np.array_equal(image(comfy_server, other, "13"), base)
    assert not np.array_equal(image(comfy_server, other, "9"), refined)


def test_full_workflow_runs_and_its_rewrite_feeds_both_stages(comfy_server, enhancer_folder):
    info = comfy_server.object_info()["MMDiTPromptEnhancer"]["input"]["required"]["model_name"][0]
    assert ENHANCER in info  # the folder is listed under the name the shipped workflow uses
    entry = run(comfy_server, shipped("hunyuanimage21_full"))
    (rewritten,) = entry["outputs"]["16"]["text"]
    assert entry["outputs"]["17"]["text"] == [""]  # no reasoning with thinking off
    assert rewritten.strip() and "prompt enhancer (HunyuanImage 2.1, official instruction)" in comfy_server.log_text()
    refined, base = image(comfy_server, entry, "9"), image(comfy_server, entry, "13")
    assert refined.shape == base.shape == (96, 64, 3)

    typed = shipped("hunyuanimage21_t2i")
    typed["10"]["inputs"]["value"] = rewritten
    by_hand = run(comfy_server, typed)
    assert np.array_equal(image(comfy_server, by_hand, "13"), base)
    assert np.array_equal(image(comfy_server, by_hand, "9"), refined)
