"""The pack in a real ComfyUI server: it loads from custom_nodes/, its nodes are listed, and the shipped
API workflow runs through /prompt on tiny checkpoints written in the published layouts."""

import json

from PIL import Image

from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS

from helpers import ROOT


def test_pack_loads_without_import_errors(comfy_server):
    # ComfyUI lists each custom-node folder with its import time, marked "(IMPORT FAILED)" on failure.
    pack_lines = [line for line in comfy_server.log_text().splitlines() if "custom_nodes/ComfyUI-MMDiT" in line]
    assert pack_lines, comfy_server.log_tail()
    assert not any("IMPORT FAILED" in line for line in pack_lines), pack_lines
    info = comfy_server.object_info()
    missing = set(NODE_CLASS_MAPPINGS) - set(info)
    assert not missing, f"nodes not registered in ComfyUI: {missing}"
    # The loaders list what ComfyUI's folders hold, and the sampler offers ComfyUI's own lists.
    assert "qwen_image_bf16.safetensors" in info["MMDiTModelLoader"]["input"]["required"]["model_name"][0]
    schedulers = info["MMDiTSampler"]["input"]["required"]["scheduler"][0]
    assert schedulers[0] == "official" and "karras" in schedulers
    assert "dpmpp_2m" in info["MMDiTSampler"]["input"]["required"]["sampler_name"][0]
    # The editor helper is served, and finds the preset sizes it fills in in the node definition.
    script = comfy_server.get_text("/extensions/ComfyUI-MMDiT/mmdit.js")
    assert "MMDiTEmptyLatent" in script and "mmdit_presets" in script
    aspect_options = info["MMDiTEmptyLatent"]["input"]["required"]["aspect"][1]
    assert aspect_options["mmdit_presets"]["Qwen-Image"]["16:9"] == [1664, 928]
    # ComfyUI offers workflows/*.json as templates: only the UI-format ones (the API twins would not open).
    templates = json.loads(comfy_server.get_text("/workflow_templates"))["ComfyUI-MMDiT"]
    assert sorted(templates) == sorted(p.stem for p in (ROOT / "workflows").glob("*.json")) == [
        "hunyuanimage21_distilled", "hunyuanimage21_full", "hunyuanimage21_t2i", "qwen_image_edit",
        "qwen_image_edit_multi", "qwen_image_t2i"]


def test_core_only_workflow_runs(comfy_server):
    """The harness itself: ComfyUI executes a prompt of core nodes and writes its output."""
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "core_check"}},
    }
    entry = comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=60)
    (path,) = comfy_server.outputs(entry)
    assert Image.open(path).size == (32, 24)


def test_shipped_qwen_image_workflow_runs(comfy_server):
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=96, height=64, batch_size=2)
    workflow["6"]["inputs"].update(steps=3)  # tiny random models: a pipeline check, a few steps suffice
    entry = comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=300)
    paths = comfy_server.outputs(entry)
    assert len(paths) == 2
    for path in paths:
        assert Image.open(path).size == (96, 64)


def test_gguf_model_is_listed_and_runs(comfy_server):
    info = comfy_server.object_info()
    assert "qwen-image-Q4_0.gguf" in info["MMDiTModelLoader"]["input"]["required"]["model_name"][0]
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["1"]["inputs"]["model_name"] = "qwen-image-Q4_0.gguf"
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=48, height=80)
    workflow["6"]["inputs"].update(steps=2)
    (path,) = comfy_server.outputs(comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=300))
    assert Image.open(path).size == (48, 80)


def test_bad_file_is_a_clear_error_and_comfyui_keeps_running(comfy_server):
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["1"]["inputs"]["model_name"] = "qwen_image_vae.safetensors"  # a VAE given to the model loader
    (comfy_server.base_dir / "models" / "diffusion_models" / "qwen_image_vae.safetensors").symlink_to(
        comfy_server.base_dir / "models" / "vae" / "qwen_image_vae.safetensors")
    try:  # refused when queued now (the loader's VALIDATE_INPUTS opens the file), before it runs
        comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=120)
        raise AssertionError("the workflow should have failed")
    except RuntimeError as error:
        message = str(error)
    assert "is not a diffusion model" in message and "Qwen-Image VAE" in message
    assert comfy_server.object_info()  # still serving


def test_corrupt_vae_is_refused_when_queued_before_anything_runs(comfy_server):
    vae_folder = comfy_server.base_dir / "models" / "vae"
    data = (vae_folder / "qwen_image_vae.safetensors").read_bytes()
    (vae_folder / "damaged_vae.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["7"]["inputs"]["vae_name"] = "damaged_vae.safetensors"
    workflow["6"]["inputs"]["seed"] = 4242  # a prompt ComfyUI has not run (and cached) before
    history_before = comfy_server.history()

    status, answer = comfy_server.submit(workflow)
    assert status == 400, answer
    (error,) = answer["node_errors"]["7"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert "damaged_vae.safetensors: is truncated" in error["details"]
    assert str(vae_folder / "damaged_vae.safetensors") in error["details"]
    assert list(answer["node_errors"]) == ["7"]  # the sound nodes pass
    assert comfy_server.history() == history_before  # nothing was queued, so nothing ran


def test_interrupt_stops_sampling(comfy_server):
    import time

    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=32, height=32)
    workflow["6"]["inputs"].update(steps=1000, seed=99)  # far longer than the test waits
    prompt_id = comfy_server.queue_prompt(workflow)
    time.sleep(3)
    started = time.monotonic()
    comfy_server.interrupt()
    entry = comfy_server.wait_for(prompt_id, timeout=60, allow_failure=True)
    assert time.monotonic() - started < 30
    messages = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in messages, messages
    assert not comfy_server.outputs(entry)
