"""HunyuanImage 2.1 in a real ComfyUI server: the shipped workflows through /prompt on tiny files in the
published layouts, the core KSampler on the MODEL, and the wiring mistakes a user can make, each refused
with a message naming what was found and what was expected."""

import json

import pytest
from PIL import Image

from helpers import ROOT

WORKFLOWS = {"base": "hunyuanimage21_t2i.api.json", "distilled": "hunyuanimage21_distilled.api.json"}


def shipped(variant: str, width=96, height=64, steps=2, seed=5) -> dict:
    workflow = json.loads((ROOT / "workflows" / "api" / WORKFLOWS[variant]).read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=width, height=height)
    workflow["6"]["inputs"].update(steps=steps, seed=seed)  # tiny random models: a pipeline check
    if "14" in workflow:  # the base workflow's refine stage (test_comfyui_hunyuan_workflows.py checks it)
        workflow["14"]["inputs"].update(steps=2)
    return workflow


def set_prompt(workflow: dict, text: str) -> None:
    """The positive prompt: the base workflow's String primitive (read by the encoder and the refiner), or
    the distilled workflow's MMDiT Text Encode."""
    if isinstance(workflow["3"]["inputs"]["text"], list):
        workflow[workflow["3"]["inputs"]["text"][0]]["inputs"]["value"] = text
    else:
        workflow["3"]["inputs"]["text"] = text


def saved_image(comfy_server, entry) -> Image.Image:
    """The image the SaveImage node (9) wrote (the base workflow also previews its unrefined image)."""
    (saved,) = entry["outputs"]["9"]["images"]
    return Image.open(comfy_server.base_dir / "output" / saved.get("subfolder", "") / saved["filename"])


def failure(comfy_server, workflow) -> str:
    status, answer = comfy_server.submit(workflow)
    if status != 200:
        return json.dumps(answer)
    entry = comfy_server.wait_for(answer["prompt_id"], timeout=300, allow_failure=True)
    messages = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert messages, "the workflow should have failed"
    return messages[0][1]["exception_message"]


@pytest.mark.parametrize("variant", ["base", "distilled"])
def test_shipped_workflow_runs(comfy_server, variant):
    workflow = shipped(variant, steps=3)
    set_prompt(workflow, 'a shop sign that reads "OPEN", and a cat')  # glyph text through ByT5
    entry = comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=300)
    assert saved_image(comfy_server, entry).size == (96, 64)


def test_prompt_without_quotes_and_a_gguf_model(comfy_server):
    workflow = shipped("distilled", width=64, height=64)
    workflow["1"]["inputs"]["model_name"] = "hunyuanimage2.1-distilled-Q8_0.gguf"
    workflow["3"]["inputs"]["text"] = "a quiet lake at dawn"
    (path,) = comfy_server.outputs(comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=300))
    assert Image.open(path).size == (64, 64)


def test_core_ksampler_and_comfyui_latent_on_the_model(comfy_server):
    """The MODEL is native: ComfyUI's own empty latent and KSampler (dpmpp_2m, karras) run it."""
    workflow = shipped("distilled")
    workflow["5"] = {"class_type": "EmptyHunyuanImageLatent", "inputs": {"width": 64, "height": 96, "batch_size": 1}}
    workflow["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 3,
        "steps": 2, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}}
    (path,) = comfy_server.outputs(comfy_server.wait_for(comfy_server.queue_prompt(workflow), timeout=300))
    assert Image.open(path).size == (64, 96)


def test_qwen_image_vae_in_a_hunyuan_graph_is_named(comfy_server):
    workflow = shipped("distilled")
    workflow["7"]["inputs"]["vae_name"] = "qwen_image_vae.safetensors"
    message = failure(comfy_server, workflow)
    assert "64 channels (HunyuanImage 2.1 latents)" in message and "Qwen-Image VAE" in message
    assert "16-channel" in message


def test_prompts_encoded_for_qwen_image_are_refused(comfy_server):
    workflow = shipped("base")
    workflow["2"]["inputs"].update(family="Qwen-Image", text_encoder_2_name="none")
    message = failure(comfy_server, workflow)
    assert "encoded for Qwen-Image" in message and "the model is HunyuanImage 2.1" in message


def test_missing_glyph_encoder_is_named(comfy_server):
    workflow = shipped("base")
    workflow["2"]["inputs"]["text_encoder_2_name"] = "none"
    message = failure(comfy_server, workflow)
    assert "HunyuanImage 2.1 also needs the ByT5 glyph encoder" in message


def test_qwen_latent_given_to_the_hunyuan_model(comfy_server):
    workflow = shipped("distilled")
    workflow["5"]["inputs"].update(family="Qwen-Image", width=64, height=64)
    message = failure(comfy_server, workflow)
    assert "16 channels" in message and "HunyuanImage 2.1 works on 64-channel latents" in message


def test_hunyuan_model_in_a_qwen_graph(comfy_server):
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["1"]["inputs"]["model_name"] = "hunyuanimage2.1_bf16.safetensors"
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=64)
    workflow["6"]["inputs"].update(steps=1)
    message = failure(comfy_server, workflow)
    assert "16 channels" in message and "HunyuanImage 2.1 works on 64-channel latents" in message


def test_sampling_defaults_route_reads_the_variant_from_the_file(comfy_server):
    """What the editor asks when a model is picked (web/mmdit.js prefills MMDiT Sampler with it)."""
    def ask(name):
        return comfy_server.get_json(f"/mmdit/sampling_defaults?model_name={name}")

    assert ask("hunyuanimage2.1_distilled_bf16.safetensors") == (200, {
        "family": "HunyuanImage 2.1", "variant": "distilled", "steps": 8, "cfg": 3.25, "guidance": "embedded guidance"})
    status, answer = ask("hunyuanimage2.1_bf16.safetensors")
    assert status == 200 and (answer["steps"], answer["cfg"], answer["variant"]) == (50, 3.5, "base")
    assert ask("qwen_image_bf16.safetensors")[1]["cfg"] == 4.0
    status, answer = ask("../../etc/passwd")
    assert status == 400 and "is not in the diffusion_models folders" in answer["error"]


def _qwen_workflow() -> dict:
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=64)
    workflow["6"]["inputs"].update(steps=1, seed=77)
    return workflow


def test_hunyuan_vae_in_a_qwen_graph_is_named(comfy_server):
    workflow = _qwen_workflow()
    workflow["7"]["inputs"]["vae_name"] = "hunyuan_image_2.1_vae_fp16.safetensors"
    message = failure(comfy_server, workflow)
    assert "16 channels (Qwen-Image latents)" in message and "HunyuanImage 2.1 VAE" in message


def test_prompts_encoded_for_hunyuan_in_a_qwen_graph_are_refused(comfy_server):
    workflow = _qwen_workflow()
    workflow["2"]["inputs"].update(family="HunyuanImage 2.1", text_encoder_2_name="byt5_small_glyphxl_fp16.safetensors")
    message = failure(comfy_server, workflow)
    assert "encoded for HunyuanImage 2.1" in message and "the model is Qwen-Image" in message


def test_a_byt5_picked_as_the_main_encoder_of_qwen_image_is_named(comfy_server):
    workflow = _qwen_workflow()
    workflow["2"]["inputs"]["text_encoder_name"] = "byt5_small_glyphxl_fp16.safetensors"
    message = failure(comfy_server, workflow)
    assert "is not a text encoder Qwen-Image uses" in message and "Qwen2.5-VL-7B" in message
