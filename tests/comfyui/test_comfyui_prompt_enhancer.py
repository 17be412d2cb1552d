"""MMDiT Prompt Enhancer inside a real ComfyUI.

In-process: its model folders are registered beside ComfyUI's own (which stay as they were), the model
runs under ComfyUI's memory manager (loaded through load_models_gpu, with comfy.ops layers) and gives the
same text as on the standalone host; without keep_loaded nothing of it stays alive afterwards, with it
ComfyUI holds it as a loaded model until it is released.

Server: the node is listed with its STRING outputs, and in the shipped Qwen-Image workflow its `prompt`
output linked into MMDiT Text Encode's `text` (a widget input taking a link, as the editor's
widget-to-input conversion produces) runs through /prompt; the text it produced (shown by ComfyUI's
PreviewAny) typed into the same workflow by hand gives the same image, so the STRING is what the encoder read.
"""

import json
import weakref

import numpy as np
import pytest
from PIL import Image

from comfy_harness import pack_on_comfyui_host, write_tiny_models

from helpers import ROOT

MODEL = "PromptEnhancer-7B"
INPUTS = dict(model_name=MODEL, prompt="a cat on a red chair", target="HunyuanImage 2.1", seed=5, max_new_tokens=10,
              temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)


@pytest.fixture(scope="module")
def pack(comfy_inprocess, tmp_path_factory):
    models = tmp_path_factory.mktemp("comfy_enhancer_models")
    before = {kind: list(paths) for kind, (paths, _) in comfy_inprocess.folder_paths.folder_names_and_paths.items()}
    with pack_on_comfyui_host() as nodes:
        write_tiny_models(comfy_inprocess.folder_paths, models, {"prompt_enhancers": MODEL})
        yield nodes, models, before


def test_model_folders_are_registered_beside_comfyuis(pack, comfy_inprocess):
    _, _, before = pack
    folder_paths = comfy_inprocess.folder_paths
    paths, extensions = folder_paths.folder_names_and_paths["prompt_enhancers"]
    assert {str(folder_paths.models_dir) + "/prompt_enhancers", str(folder_paths.models_dir) + "/LLM"} <= set(paths)
    assert {".safetensors", ".gguf"} <= extensions
    for kind, old in before.items():  # the kinds ComfyUI (and other packs) defined keep their folders
        if kind != "prompt_enhancers":
            assert folder_paths.folder_names_and_paths[kind][0][:len(old)] == old


def test_runs_under_the_memory_manager_and_frees_its_memory(pack, comfy_inprocess, monkeypatch):
    import comfy.model_management as mm
    import comfy.ops

    from comfyui_mmdit.nodes import prompt_enhancer as node_module
    from comfyui_mmdit.nodes.host import get_host

    nodes, _, _ = pack
    host = get_host()
    assert host.name == "comfyui"
    managed_modules, loaded_patchers = [], []
    original_manage, original_load = host.manage, mm.load_models_gpu
    monkeypatch.setattr(host, "manage", lambda module, kind, dtype=None: managed_modules.append(weakref.ref(module))
                        or original_manage(module, kind, dtype))
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: loaded_patchers.extend(models)
                        or original_load(models, *a, **k))

    prompt, reasoning = nodes["MMDiTPromptEnhancer"]().enhance(**INPUTS)
    assert isinstance(prompt, str) and prompt and reasoning == ""
    assert len(loaded_patchers) == 1  # moved to its device by ComfyUI's memory manager
    del loaded_patchers[:]
    assert managed_modules[0]() is None  # keep_loaded off: nothing refers to the model any more
    mm.cleanup_models()
    assert not [m for m in mm.current_loaded_models if m.model is not None
                and type(m.model.model).__name__ == "_Holder"]

    kept, _ = nodes["MMDiTPromptEnhancer"]().enhance(**INPUTS, keep_loaded=True)
    assert kept == prompt  # same seed, same text
    model = managed_modules[1]()
    assert model is not None and isinstance(model.model.layers[0].mlp.down_proj, comfy.ops.manual_cast.Linear)
    assert any(m.model is not None and getattr(m.model.model, "module", None) is model
               for m in mm.current_loaded_models)  # ComfyUI holds it (and may offload it when memory is short)
    del model, loaded_patchers[:]
    node_module.release_kept()
    assert managed_modules[1]() is None


def test_same_text_as_on_the_standalone_host(pack, comfy_inprocess):
    from comfyui_mmdit.nodes.host import set_host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost

    nodes, models, _ = pack
    inside = nodes["MMDiTPromptEnhancer"]().enhance(**INPUTS)
    set_host(StandaloneHost(models_dir=models, device="cpu"))
    try:
        outside = nodes["MMDiTPromptEnhancer"]().enhance(**INPUTS)
    finally:
        set_host(None)
    assert inside == outside


def _workflow(text) -> dict:
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=48)
    workflow["6"]["inputs"].update(steps=2, seed=3)
    workflow["3"]["inputs"]["text"] = text
    return workflow


def test_prompt_reaches_text_encode_in_the_server(comfy_server):
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    write_tiny_component("prompt_enhancers", comfy_server.base_dir / "models" / "LLM" / MODEL)
    info = comfy_server.object_info()["MMDiTPromptEnhancer"]
    assert info["output"] == ["STRING", "STRING"] and info["output_name"] == ["prompt", "reasoning"]
    assert MODEL in comfy_server.object_info()["MMDiTPromptEnhancer"]["input"]["required"]["model_name"][0]

    linked = _workflow(["20", 0])
    linked["20"] = {"class_type": "MMDiTPromptEnhancer", "inputs": {**INPUTS, "target": "Qwen-Image"}}
    linked["21"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}}
    entry = comfy_server.wait_for(comfy_server.queue_prompt(linked), timeout=300)
    (text,) = entry["outputs"]["21"]["text"]
    assert text and "prompt enhancer (Qwen-Image" in comfy_server.log_text()
    (with_enhancer,) = comfy_server.outputs(entry)

    typed = comfy_server.wait_for(comfy_server.queue_prompt(_workflow(text)), timeout=300)
    (by_hand,) = comfy_server.outputs(typed)
    assert np.array_equal(np.asarray(Image.open(with_enhancer)), np.asarray(Image.open(by_hand)))
    other = comfy_server.wait_for(comfy_server.queue_prompt(_workflow(text + " at night")), timeout=300)
    (different,) = comfy_server.outputs(other)
    assert not np.array_equal(np.asarray(Image.open(with_enhancer)), np.asarray(Image.open(different)))
