"""HunyuanImage 2.1's refine stage in a real ComfyUI server: base (distilled) stage, then MMDiT Refiner on its
LATENT (decoded with the base VAE, re-encoded with the refiner VAE) through ComfyUI's memory manager; a
refiner given to MMDiT Sampler is refused with a message."""

import json

from PIL import Image

from helpers import ROOT


def base_then_refiner(width=64, height=96) -> dict:
    workflow = json.loads((ROOT / "workflows" / "api" / "hunyuanimage21_distilled.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=width, height=height)
    workflow["6"]["inputs"].update(steps=2, seed=5)  # tiny random models: a pipeline check
    workflow["10"] = {"class_type": "MMDiTModelLoader", "inputs": {
        "model_name": "hunyuanimage2.1_refiner_bf16.safetensors", "weight_dtype": "default", "attention": "auto"}}
    workflow["11"] = {"class_type": "MMDiTVAELoader", "inputs": {"vae_name": "hunyuan_image_refiner_vae_fp16.safetensors"}}
    workflow["12"] = {"class_type": "MMDiTRefiner", "inputs": {
        "model": ["10", 0], "text_encoder": ["2", 0], "refiner_vae": ["11", 0], "prompt": "a quiet lake at dawn",
        "seed": 1, "steps": 2, "guidance": 3.25, "condition_noise": 0.25, "samples": ["6", 0], "vae": ["7", 0]}}
    workflow["9"]["inputs"]["images"] = ["12", 0]
    return workflow


def test_base_then_refiner_runs(comfy_server):
    (path,) = comfy_server.outputs(comfy_server.wait_for(comfy_server.queue_prompt(base_then_refiner()), timeout=300))
    assert Image.open(path).size == (64, 96)


def test_refiner_in_the_sampler_is_refused(comfy_server):
    workflow = base_then_refiner()
    workflow["6"]["inputs"]["model"] = ["10", 0]
    status, answer = comfy_server.submit(workflow)
    assert status == 200, answer
    entry = comfy_server.wait_for(answer["prompt_id"], timeout=300, allow_failure=True)
    messages = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert messages and "is a refiner: it refines a finished image" in messages[0][1]["exception_message"]
