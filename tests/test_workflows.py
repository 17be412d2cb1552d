"""Every shipped workflow: node types exist, widget values fit INPUT_TYPES, links join matching types."""

import json

import pytest

from comfyui_mmdit.loaders.formats.open import MODEL_FILE_SUFFIXES
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS
from comfyui_mmdit.nodes.host.workflow_check import input_specs, types_match
from comfyui_mmdit.nodes.host.workflow_runner import CORE_NODES
from comfyui_mmdit.nodes.host.standalone import IMAGE_SUFFIXES
from comfyui_mmdit.tools.workflow_ui import api_to_ui, extra_widget_values, is_widget, node_signature, ui_twin

from helpers import ROOT

API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.api.json"))
# workflows/*.json: the UI format only, since ComfyUI offers every JSON file there as a template.
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def test_there_are_workflows_and_each_has_a_ui_twin():
    assert API_WORKFLOWS
    assert {ui_twin(p) for p in API_WORKFLOWS} == set(UI_WORKFLOWS)


def check_value(class_type: str, name: str, spec, value):
    """A widget value that ComfyUI's validation would accept (file lists: a model file name, or an image in
    the input folder, which lists what the user has)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    where = f"{class_type}.{name} = {value!r}"
    if name in getattr(NODE_CLASS_MAPPINGS.get(class_type), "FILE_INPUTS", {}):
        optional = value == "none" and name in input_specs(NODE_CLASS_MAPPINGS[class_type])[1]
        assert isinstance(value, str) and (optional or value.endswith(MODEL_FILE_SUFFIXES) or "/" in value), where
    elif options.get("image_upload"):
        assert isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES), where
    elif isinstance(kind, (list, tuple)):
        assert value in kind, f"{where} is not one of {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)), where
        assert options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow(path):
    workflow = json.loads(path.read_text())
    for node_id, node in workflow.items():
        class_type = node["class_type"]
        assert class_type in NODE_CLASS_MAPPINGS or class_type in CORE_NODES, f"unknown node {class_type}"
        cls = NODE_CLASS_MAPPINGS.get(class_type)
        inputs, _ = node_signature(class_type, NODE_CLASS_MAPPINGS)
        required = (cls or CORE_NODES[class_type]).INPUT_TYPES()["required"]
        assert not (set(required) - set(node["inputs"])), f"node {node_id} misses required inputs"
        assert not (set(node["inputs"]) - set(inputs)), f"node {node_id} has unknown inputs"
        for name, value in node["inputs"].items():
            spec = inputs[name]
            if isinstance(value, list):  # a link: [source node, output index]
                source, slot = value
                assert source in workflow, f"node {node_id}.{name} links to missing node {source}"
                _, outputs = node_signature(workflow[source]["class_type"], NODE_CLASS_MAPPINGS)
                assert slot < len(outputs) and types_match(outputs[slot], spec[0]), \
                    f"node {node_id}.{name} expects {spec[0]}, linked to a {outputs[slot:slot + 1]}"
            else:
                assert is_widget(spec), f"node {node_id}.{name} needs a link"
                check_value(class_type, name, spec, value)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow(path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    for node in workflow["nodes"]:
        inputs, outputs = node_signature(node["type"], NODE_CLASS_MAPPINGS)
        widgets = [(n, s) for n, s in inputs.items() if is_widget(s)]
        values = list(node["widgets_values"])
        for name, spec in widgets:
            check_value(node["type"], name, spec, values.pop(0))
            for expected in extra_widget_values(spec, name):  # the control mode of a seed, LoadImage's upload button
                value = values.pop(0)
                assert value in ("fixed", "increment", "decrement", "randomize") if expected == "fixed" else \
                    value == expected
        assert values == [], f"{node['type']} has extra widget values {values}"
        optional = set((NODE_CLASS_MAPPINGS.get(node["type"]) or CORE_NODES[node["type"]]).INPUT_TYPES().get("optional", {}))
        for slot, entry in enumerate(node["inputs"]):
            assert inputs[entry["name"]][0] == entry["type"]
            if entry["link"] is None:  # an optional input left open (image_2 of a one-image edit)
                assert entry["name"] in optional, f"{node['type']}.{entry['name']} needs a link"
                continue
            link = links[entry["link"]]
            assert (link[3], link[4]) == (node["id"], slot)
            assert types_match(link[5], entry["type"])  # PreviewAny's source takes any type ("*")
            # A widget fed by a link (a prompt from another node) is marked as the frontend marks it.
            assert entry.get("widget") == ({"name": entry["name"]} if is_widget(inputs[entry["name"]]) else None)
        for slot, entry in enumerate(node["outputs"]):
            assert entry["type"] == outputs[slot]
            for link_id in entry["links"]:
                assert links[link_id][1:3] == [node["id"], slot]
    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        _, outputs = node_signature(nodes[source]["type"], NODE_CLASS_MAPPINGS)
        assert outputs[slot] == kind
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_ui_twin_is_up_to_date(path):
    """The UI workflow is generated from the API one (python cli.py ui-workflows): they never drift."""
    twin = ui_twin(path)
    assert json.loads(twin.read_text()) == api_to_ui(json.loads(path.read_text()), NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("name, images, resolution", [("qwen_image_edit", 1, "native"),
                                                      ("qwen_image_edit_multi", 3, "official")])
def test_edit_workflows_use_the_official_settings_and_the_published_files(name, images, resolution):
    """The diffusers Edit pipelines' defaults (50 steps, true CFG 4.0 with a one-space negative prompt), the
    Comfy-Org file names, and each image on its own socket (the prompt naming Picture N for several)."""
    workflow = json.loads((ROOT / "workflows" / "api" / f"{name}.api.json").read_text())
    by_type = {}
    for node_id, node in workflow.items():
        by_type.setdefault(node["class_type"], []).append((node_id, node["inputs"]))
    (_, sampler), = by_type["MMDiTSampler"]
    assert {k: sampler[k] for k in ("steps", "cfg", "scheduler", "guidance")} == {
        "steps": 50, "cfg": 4.0, "scheduler": "official", "guidance": "official"}
    (_, reference), = by_type["MMDiTReferenceImages"]
    assert reference["negative_prompt"] == " " and reference["resolution"] == resolution
    assert reference["model"] == "Qwen-Image-Edit-2509 / 2511 (from the model file)"
    sockets = ["image", "image_2", "image_3"][:images]
    loads = [node_id for node_id, _ in by_type["LoadImage"]]
    assert [reference[s][0] for s in sockets] == loads and not set(reference) & {"image_2", "image_3"} - set(sockets)
    assert images == 1 or all(f"Picture {i}" in reference["prompt"] for i in range(1, images + 1))
    assert [sampler[k][0] for k in ("positive", "negative", "latent_image")] == [by_type["MMDiTReferenceImages"][0][0]] * 3
    assert by_type["MMDiTModelLoader"][0][1]["model_name"] == "qwen_image_edit_2511_bf16.safetensors"
    assert by_type["MMDiTTextEncoderLoader"][0][1]["text_encoder_name"] == "qwen_2.5_vl_7b.safetensors"
    assert by_type["MMDiTVAELoader"][0][1]["vae_name"] == "qwen_image_vae.safetensors"


def _by_type(workflow: dict) -> dict:
    by_type = {}
    for node_id, node in workflow.items():
        by_type.setdefault(node["class_type"], []).append((node_id, node["inputs"]))
    return by_type


@pytest.mark.parametrize("name", ["hunyuanimage21_t2i", "hunyuanimage21_full"])
def test_hunyuan_workflows_run_the_official_base_then_refiner_path(name):
    """HunyuanImage 2.1's official path (hyimage/diffusion/pipelines/hunyuanimage_pipeline.py): the base model
    at 2048x2048 (50 steps, adaptive projected guidance 3.5, seed 42), its latent decoded with the base VAE into
    the refiner (4 steps, the base guidance 3.5 as embedded guidance, the same seed, official conditioning
    noise), reading the same prompt as the base model; the refined image is the one saved, the base image
    is previewed. Comfy-Org's file names."""
    from comfyui_mmdit.model_defs.hunyuan_image.refiner import REFINER_SAMPLING

    workflow = json.loads((ROOT / "workflows" / "api" / f"{name}.api.json").read_text())
    by_type = _by_type(workflow)
    (sampler_id, sampler), = by_type["MMDiTSampler"]
    assert {k: sampler[k] for k in ("seed", "steps", "cfg", "scheduler", "guidance", "denoise")} == {
        "seed": 42, "steps": 50, "cfg": 3.5, "scheduler": "official", "guidance": "official", "denoise": 1.0}
    latent = workflow[sampler["latent_image"][0]]["inputs"]
    assert (latent["family"], latent["aspect"], latent["width"], latent["height"]) == ("HunyuanImage 2.1", "1:1", 2048, 2048)
    files = {node_id: inputs for kind in ("MMDiTModelLoader", "MMDiTVAELoader") for node_id, inputs in by_type[kind]}
    assert files[sampler["model"][0]]["model_name"] == "hunyuanimage2.1_bf16.safetensors"

    (refiner_id, refiner), = by_type["MMDiTRefiner"]
    assert {k: refiner[k] for k in ("seed", "steps", "guidance", "condition_noise")} == {
        "seed": sampler["seed"], "steps": REFINER_SAMPLING.steps, "guidance": sampler["cfg"],
        "condition_noise": REFINER_SAMPLING.condition_strength}
    assert (REFINER_SAMPLING.steps, REFINER_SAMPLING.guidance_scale, REFINER_SAMPLING.condition_strength) == (4, 3.5, 0.25)
    assert refiner["samples"] == [sampler_id, 0] and "image" not in refiner  # the base LATENT, decoded inside
    assert files[refiner["vae"][0]]["vae_name"] == "hunyuan_image_2.1_vae_fp16.safetensors"
    assert files[refiner["model"][0]]["model_name"] == "hunyuanimage2.1_refiner_bf16.safetensors"
    assert files[refiner["refiner_vae"][0]]["vae_name"] == "hunyuan_image_refiner_vae_fp16.safetensors"

    positive = workflow[sampler["positive"][0]]["inputs"]
    assert refiner["text_encoder"] == positive["text_encoder"]
    # One prompt feeds both stages: the positive encoder's text and the refiner's prompt are the same link.
    assert isinstance(refiner["prompt"], list) and positive["text"] == refiner["prompt"]
    assert workflow[sampler["negative"][0]]["inputs"]["text"] == ""  # the official default negative prompt
    (_, save), = by_type["SaveImage"]
    assert save["images"] == [refiner_id, 0]
    (_, preview), = by_type["PreviewImage"]
    decode = workflow[preview["images"][0]]
    assert decode["class_type"] == "MMDiTVAEDecode" and decode["inputs"]["samples"] == [sampler_id, 0]

    source_id, slot = refiner["prompt"]
    source = workflow[source_id]
    if name == "hunyuanimage21_t2i":
        assert source["class_type"] == "PrimitiveStringMultiline" and "Moonlight Books" in source["inputs"]["value"]
        assert "MMDiTPromptEnhancer" not in by_type
        return
    # hunyuanimage21_full: the prompt enhancer's rewrite feeds both stages, with the official call's settings.
    from comfyui_mmdit.nodes.prompt_enhancer import DEFAULTS

    assert source["class_type"] == "MMDiTPromptEnhancer" and slot == 0
    enhancer = source["inputs"]
    assert enhancer["model_name"] == "HunyuanImage-2.1/reprompt" and enhancer["target"] == "HunyuanImage 2.1"
    assert {k: enhancer[k] for k in DEFAULTS} == DEFAULTS and DEFAULTS["max_new_tokens"] == 2048
    assert enhancer["seed"] == sampler["seed"]  # the official pipeline seeds the rewrite with the generation seed
    assert (enhancer["thinking"], enhancer["keep_loaded"], enhancer["allow_tokenizer_code"]) == (False, False, False)
    assert "Moonlight Books" in enhancer["prompt"]
    shown = sorted(inputs["source"] for _, inputs in by_type["PreviewAny"])
    assert shown == [[source_id, 0], [source_id, 1]]  # the rewritten prompt and the reasoning, as text
