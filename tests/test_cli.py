"""The command line fails early and clearly: every bad input is one message and a non-zero exit, found
before anything runs where it can be; demo mode uses the real files that are present; the loaders'
VALIDATE_INPUTS open and check model files (and remember a pass per file version)."""

import json
import os
import shutil

import pytest
import torch

from comfyui_mmdit import cli
from comfyui_mmdit.loaders import check_cache
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.text_encoder import load_text_encoder
from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageConfig
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import (TINY_QWEN_DIT, tiny_qwen_dit_state_dict, tiny_qwen_text_state_dict,
                                             write_safetensors, write_tiny_component)
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_qwen_tokenizer

from helpers import ROOT

# transformers makes its log handler on its first message, bound to the sys.stderr of that moment: made inside
# a capsys test (the prompt enhancer's config warnings), it would write to that test's closed stream in later
# tests ("--- Logging error ---" in their captured stderr). Made now, at collection, it writes to pytest's own.
from transformers.utils import logging as transformers_logging  # noqa: E402

transformers_logging.get_logger("transformers")

SHIPPED = ROOT / "workflows" / "api" / "qwen_image_t2i.api.json"
DIT = ("diffusion_models", "qwen_image_bf16.safetensors")
TEXT_ENCODER = ("text_encoders", "qwen_2.5_vl_7b.safetensors")
VAE = ("vae", "qwen_image_vae.safetensors")


@pytest.fixture(scope="module")
def model_set(tmp_path_factory):
    """Tiny files under the shipped workflow's names: the 'real' files of these tests."""
    root = tmp_path_factory.mktemp("model_set")
    for folder, name in (DIT, TEXT_ENCODER, VAE):
        write_tiny_component(folder, root / folder / name)
    return root


@pytest.fixture(autouse=True)
def fresh_host():
    yield
    set_host(None)  # the command line installs its own host; leave none behind


def models_with(tmp_path, model_set, *parts):
    """A models folder holding copies of `parts` of the tiny set (the text encoder with its tokenizer)."""
    models = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    for folder, name in parts:
        shutil.copy(model_set / folder / name, models / folder / name)
        tokenizer = model_set / folder / f"{name.rsplit('.', 1)[0]}_tokenizer"
        if tokenizer.is_dir():
            shutil.copytree(tokenizer, models / folder / tokenizer.name)
    return models


def workflow_file(tmp_path, change=None, name="small.api.json"):
    """The shipped workflow at 64x48 and 2 steps, with `change(workflow)` applied."""
    workflow = json.loads(SHIPPED.read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=48)
    workflow["6"]["inputs"].update(steps=2)
    if change:
        change(workflow)
    path = tmp_path / name
    path.write_text(json.dumps(workflow))
    return path


def run(capsys, tmp_path, workflow, models, *extra):
    code = cli.main(["run", str(workflow), "--models", str(models), "--output", str(tmp_path / "out"),
                     "--demo-dir", str(tmp_path / "demo"), "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def refused(code, err, *messages):
    assert code == 2, err
    assert "Traceback" not in err, err
    for message in messages:
        assert message in err, err


@pytest.fixture
def calls(monkeypatch):
    """Which of the model loader, the sampler node and the sampling loop ran."""
    ran = []

    def recording(original, label):
        def wrapper(self, *args, **kwargs):
            ran.append(label)
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(NODES["MMDiTModelLoader"], "load", recording(NODES["MMDiTModelLoader"].load, "load model"))
    monkeypatch.setattr(NODES["MMDiTSampler"], "sample", recording(NODES["MMDiTSampler"].sample, "sampler"))
    monkeypatch.setattr(StandaloneHost, "sample", recording(StandaloneHost.sample, "sampling"))
    return ran


# --- the workflow file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ('{\n  "1": {"class_type": "MMDiTSampler",,}\n}', "is not valid JSON: Expecting property name enclosed in double "
                                                      "quotes at line 2, column 38"),
    ("[1, 2]", "holds a JSON list; an API-format workflow is a JSON object"),
    ('{"1": "MMDiTSampler"}', "node 1: is a JSON string, not a node object with class_type and inputs"),
    ('{"1": {"inputs": {}}}', "node 1: has no class_type"),
    ('{"1": {"class_type": "MMDiTEmptyLatent"}}', "node 1 (MMDiTEmptyLatent): has no inputs object"),
    ("{}", "holds no nodes"),
])
def test_workflow_file_problems(tmp_path, capsys, content, message):
    path = tmp_path / "flow.api.json"
    if content is not None:
        path.write_text(content)
    (tmp_path / "models").mkdir()
    code, _, err = run(capsys, tmp_path, path, tmp_path / "models")
    refused(code, err, f"{path}: {message}" if content is None else message)


def test_ui_format_workflow_points_at_its_api_twin(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    code, _, err = run(capsys, tmp_path, ROOT / "workflows" / "qwen_image_t2i.json", tmp_path / "models")
    refused(code, err, "is a UI-format workflow", "workflows/api/qwen_image_t2i.api.json")


def test_unknown_node_type_is_named_with_its_closest_match(tmp_path, capsys, model_set):
    def misspell(workflow):
        workflow["9"]["class_type"] = "SaveImag"
        workflow["10"] = {"class_type": "KSamplerAdvanced", "inputs": {}}

    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path, misspell), models)
    refused(code, err, "node 9: unknown node type 'SaveImag' (did you mean 'SaveImage'?)",
            "node 10: unknown node type 'KSamplerAdvanced'",
            "The command line runs these node types: LoadImage, MMDiTEmptyLatent, MMDiTModelLoader, MMDiTPromptEnhancer, "
            "MMDiTReferenceImages, MMDiTRefiner, MMDiTSampler")
    assert "only ComfyUI can run" not in err


def test_links_types_and_values_are_all_reported_before_anything_runs(tmp_path, capsys, model_set, calls):
    def break_it(workflow):
        sampler = workflow["6"]["inputs"]
        sampler.update(model=["7", 0], positive=["3", 1], negative=["42", 0], steps=5000, cfg="high",
                       sampler_name="eulr", sede=3)
        del sampler["seed"]
        workflow["5"]["inputs"].update(batch_size=2.5, family="Qwen-Imag")
        workflow["8"]["inputs"].update(tile_size=64, vae="not a link")
        workflow["9"]["inputs"]["filename_prefix"] = 7

    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path, break_it), models)
    refused(code, err, "13 problems, nothing was run",
            "node 5 (MMDiTEmptyLatent): input 'family': \"Qwen-Imag\" is not one of the choices (did you mean "
            "'Qwen-Image'?)",
            "node 5 (MMDiTEmptyLatent): input 'batch_size': must be a whole number, got 2.5",
            "node 6 (MMDiTSampler): required input 'seed' is missing",
            "node 6 (MMDiTSampler): input 'model': takes MODEL, but output 0 of node 7 (MMDiTVAELoader) is MMDIT_VAE",
            "node 6 (MMDiTSampler): input 'positive': takes output 1 of node 3 (MMDiTTextEncode), which has 1 "
            "output (0: CONDITIONING)",
            "node 6 (MMDiTSampler): input 'negative': links to node 42, which is not in the workflow",
            "node 6 (MMDiTSampler): input 'steps': 5000 is above the maximum 1000",
            "node 6 (MMDiTSampler): input 'cfg': must be a number, got \"high\"",
            "node 6 (MMDiTSampler): input 'sampler_name': \"eulr\" is not one of the choices (did you mean 'euler'?)",
            "node 6 (MMDiTSampler): unknown input 'sede' (did you mean 'seed'?); MMDiTSampler takes model, ",
            "node 8 (MMDiTVAEDecode): input 'tile_size': 64 is below the minimum 128",
            "node 8 (MMDiTVAEDecode): input 'vae': takes a MMDIT_VAE from another node's output",
            "node 9 (SaveImage): input 'filename_prefix': must be a string, got 7")
    assert calls == []


def test_cycles_are_refused(tmp_path, capsys, model_set):
    def loop(workflow):
        workflow["10"] = {"class_type": "MMDiTVAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["7", 0]}}
        workflow["11"] = {"class_type": "MMDiTVAEDecode", "inputs": {"samples": ["10", 0], "vae": ["7", 0]}}

    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path, loop), models)
    refused(code, err, "the links form a cycle: node 10 -> node 11 -> node 10")


# --- model files ------------------------------------------------------------------------------------------
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_vae_is_found_before_any_sampling_step(tmp_path, capsys, model_set, calls):
    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    truncate(models / "vae" / "qwen_image_vae.safetensors")
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path), models)
    refused(code, err, "node 7 (MMDiTVAELoader): qwen_image_vae.safetensors: is truncated",
            str(models / "vae" / "qwen_image_vae.safetensors"))
    assert calls == []  # not even the diffusion model was loaded


def test_model_file_error_at_run_time_names_the_node(tmp_path, capsys, model_set, monkeypatch, calls):
    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    truncate(models / "vae" / "qwen_image_vae.safetensors")
    # The file breaks after the check (it is replaced while the workflow runs, say).
    monkeypatch.setattr(NODES["MMDiTVAELoader"], "VALIDATE_INPUTS", classmethod(lambda cls, vae_name: True))
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path), models)
    refused(code, err, "error: node 7 (MMDiTVAELoader): qwen_image_vae.safetensors: is truncated")


def test_value_error_of_a_node_names_the_node(tmp_path, capsys, model_set):
    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    too_long = workflow_file(tmp_path, lambda w: w["3"]["inputs"].update(text="word " * 1100))
    code, _, err = run(capsys, tmp_path, too_long, models)
    refused(code, err, "error: node 3 (MMDiTTextEncode): the prompt is", "the limit is 1024")


def test_a_run_prints_absolute_output_paths_and_the_tokenizer_it_used(tmp_path, capsys, model_set, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    code = cli.main(["run", str(workflow_file(tmp_path)), "--models", "models", "--output", "out", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (png,) = (tmp_path / "out" / "MMDiT").glob("qwen_image_*.png")
    assert f"saved: {png}" in out and png.is_absolute()
    tokenizer = models / "text_encoders" / "qwen_2.5_vl_7b_tokenizer"
    assert f"qwen_2.5_vl_7b.safetensors: tokenizer from {tokenizer} (beside the weights)" in err
    assert "DEMO" not in out


# --- arguments --------------------------------------------------------------------------------------------
def test_device_that_is_not_a_device(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    code = cli.main(["run", str(SHIPPED), "--models", str(tmp_path / "models"), "--device", "gpu0"])
    refused(code, capsys.readouterr().err,
            "--device 'gpu0' is not a device; valid forms: cpu, cuda, cuda:N (N = 0, 1, ...), mps")


def test_cuda_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "models").mkdir()
    code = cli.main(["run", str(SHIPPED), "--models", str(tmp_path / "models"), "--device", "cuda"])
    refused(code, capsys.readouterr().err, "--device 'cuda': CUDA is not available on this machine", "use cpu")


def test_gpu_that_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (tmp_path / "models").mkdir()
    code = cli.main(["run", str(SHIPPED), "--models", str(tmp_path / "models"), "--device", "cuda:5"])
    refused(code, capsys.readouterr().err,
            "--device 'cuda:5': there is no such GPU; this machine has 2: cuda:0, cuda:1")


def test_models_folder_that_does_not_exist(tmp_path, capsys):
    code = cli.main(["run", str(SHIPPED), "--models", str(tmp_path / "modles"), "--device", "cpu"])
    refused(code, capsys.readouterr().err, f"the models folder {tmp_path / 'modles'} does not exist")


def test_internal_errors_show_a_traceback_and_say_so(tmp_path, capsys, model_set, monkeypatch):
    def broken(self, *args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(NODES["MMDiTVAEDecode"], "decode", broken)
    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path), models)
    assert code == 1
    assert "Traceback" in err and "KeyError: 'a bug'" in err and "internal error" in err


def test_traceback_option_shows_it_for_clear_errors_too(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    code = cli.main(["run", str(SHIPPED), "--models", str(tmp_path / "models"), "--device", "gpu0", "--traceback"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "'gpu0' is not a device" in err


# --- demo mode --------------------------------------------------------------------------------------------
def test_demo_uses_the_real_files_that_are_present(tmp_path, capsys, model_set):
    models = models_with(tmp_path, model_set, VAE)
    code, out, err = run(capsys, tmp_path, workflow_file(tmp_path), models, "--demo")
    assert code == 0, err
    assert "2 of the workflow's 3 model files are missing" in out
    stand_ins = out.split("stand-ins with the real structure replace these files:")[1].split("These real files")[0]
    assert "diffusion_models/qwen_image_bf16.safetensors" in stand_ins
    assert "text_encoders/qwen_2.5_vl_7b.safetensors" in stand_ins and "vae/" not in stand_ins
    assert f"vae/qwen_image_vae.safetensors  ({models / 'vae' / 'qwen_image_vae.safetensors'})" in out
    assert "PIPELINE CHECK, NOT A PICTURE" in out
    assert not (tmp_path / "demo" / "vae").exists()  # no stand-in for a file that is present
    assert len(list((tmp_path / "out" / "MMDiT").glob("*.png"))) == 1


def test_demo_never_replaces_a_damaged_file(tmp_path, capsys, model_set, calls):
    models = models_with(tmp_path, model_set, VAE)
    truncate(models / "vae" / "qwen_image_vae.safetensors")
    code, out, err = run(capsys, tmp_path, workflow_file(tmp_path), models, "--demo")
    refused(code, err, "node 7 (MMDiTVAELoader): qwen_image_vae.safetensors: is truncated",
            str(models / "vae" / "qwen_image_vae.safetensors"))
    assert not (tmp_path / "demo" / "vae").exists() and calls == []


def test_demo_without_any_file_says_so(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    code, out, err = run(capsys, tmp_path, workflow_file(tmp_path), tmp_path / "models")
    assert code == 0, err
    assert f"none of the workflow's model files were found in {tmp_path / 'models'}" in out
    assert out.count("(stand-in: ") == 3 and "real files are used" not in out
    assert "pipeline check (demo weights): " + str(tmp_path / "out" / "MMDiT") in out


def test_stand_in_beside_a_real_model_of_another_width_is_a_clear_error(tmp_path, capsys, calls):
    models = tmp_path / "models"
    wide = QwenImageConfig(**{**TINY_QWEN_DIT.__dict__, "joint_attention_dim": 64})
    write_safetensors(tiny_qwen_dit_state_dict(wide), models / "diffusion_models" / "qwen_image_bf16.safetensors")
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path), models, "--demo")
    refused(code, err, "node 6 (MMDiTSampler): the positive conditioning is 128 wide, but this Qwen-Image diffusion "
                       "model takes 64-wide text features",
            "the text encoder and the diffusion model are from different model families or sizes")
    assert "sampling" not in calls


def test_some_files_missing_without_demo_lists_them_with_the_other_problems(tmp_path, capsys, model_set):
    models = models_with(tmp_path, model_set, VAE)
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path, lambda w: w["6"]["inputs"].update(steps=-1)), models)
    refused(code, err, "node 6 (MMDiTSampler): input 'steps': -1 is below the minimum 1",
            f"node 1 (MMDiTModelLoader): the model file {models / 'diffusion_models' / 'qwen_image_bf16.safetensors'} "
            "is missing", "node 2 (MMDiTTextEncoderLoader): the model file", "pass --demo")


# --- tokenizers -------------------------------------------------------------------------------------------
def test_missing_tokenizer_lists_every_place_searched(tmp_path, capsys, model_set, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    models = models_with(tmp_path, model_set, DIT, VAE)
    shutil.copy(model_set / "text_encoders" / TEXT_ENCODER[1], models / "text_encoders" / TEXT_ENCODER[1])
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path), models)
    folder = models / "text_encoders"
    refused(code, err, "node 2 (MMDiTTextEncoderLoader): qwen_2.5_vl_7b.safetensors: needs a tokenizer",
            f"{folder / 'qwen_2.5_vl_7b_tokenizer'} (beside the weights)",
            f"{folder / 'tokenizer'} (beside the weights)",
            f"{folder / 'qwen25_tokenizer'} (the models folder)", "set COMFYUI_PATH to a ComfyUI checkout")


def test_tokenizer_comfyui_ships_is_found_through_comfyui_path(tmp_path, capsys, model_set, monkeypatch):
    comfyui = tmp_path / "ComfyUI"
    write_tiny_qwen_tokenizer(comfyui / "comfy" / "text_encoders" / "qwen25_tokenizer")
    monkeypatch.setenv("COMFYUI_PATH", str(comfyui))
    models = models_with(tmp_path, model_set, DIT, VAE)
    shutil.copy(model_set / "text_encoders" / TEXT_ENCODER[1], models / "text_encoders" / TEXT_ENCODER[1])
    code, _, err = run(capsys, tmp_path, workflow_file(tmp_path), models)
    assert code == 0, err
    assert (f"tokenizer from {comfyui / 'comfy' / 'text_encoders' / 'qwen25_tokenizer'} "
            "(the tokenizer ComfyUI ships, found through COMFYUI_PATH)") in err


def test_help_documents_comfyui_path(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "COMFYUI_PATH" in capsys.readouterr().out


def test_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path):
    tokenizer_dir = write_tiny_qwen_tokenizer(tmp_path / "small_vocab_tokenizer")
    tokens = len(load_tokenizer(tokenizer_dir))
    path = write_safetensors(tiny_qwen_text_state_dict(tokens - 6), tmp_path / "small_vocab.safetensors")
    with pytest.raises(ModelFileError, match=f"fewer token embeddings than its tokenizer has tokens.*"
                                             f"{tokens - 6} embedding rows; the tokenizer from .* has {tokens} tokens"):
        load_text_encoder(path)
    set_host(StandaloneHost(models_dir=tmp_path / "models", device="cpu"))
    (tmp_path / "models" / "text_encoders").mkdir(parents=True)
    shutil.move(str(path), tmp_path / "models" / "text_encoders")
    shutil.move(str(tokenizer_dir), tmp_path / "models" / "text_encoders")
    message = NODES["MMDiTTextEncoderLoader"].VALIDATE_INPUTS("small_vocab.safetensors")
    assert f"{tokens - 6} embedding rows" in message and f"has {tokens} tokens" in message


def test_convert_copies_the_tokenizer_beside_the_output(tmp_path, capsys, model_set):
    source = models_with(tmp_path, model_set, TEXT_ENCODER) / "text_encoders" / TEXT_ENCODER[1]
    target = tmp_path / "converted" / "qwen-Q8_0.gguf"
    assert cli.main(["convert", str(source), str(target), "--type", "Q8_0"]) == 0
    copy = tmp_path / "converted" / "qwen-Q8_0_tokenizer"
    assert f"copied the source's tokenizer to {copy}" in capsys.readouterr().out
    assert (copy / "vocab.json").is_file()
    loaded = load_text_encoder(target)
    assert loaded.tokenizer_source.folder == copy and loaded.tokenizer_source.origin == "beside the weights"

    shutil.rmtree(source.parent / "qwen_2.5_vl_7b_tokenizer")
    assert cli.main(["convert", str(source), str(tmp_path / "bare" / "qwen-Q8_0.gguf"), "--type", "Q8_0"]) == 0
    out = capsys.readouterr().out
    assert "no tokenizer beside" in out and str(tmp_path / "bare" / "qwen-Q8_0_tokenizer") in out
    assert "COMFYUI_PATH" in out and not (tmp_path / "bare" / "qwen-Q8_0_tokenizer").exists()


def test_convert_of_a_byt5_without_tokenizer_says_the_built_in_one_serves(tmp_path, capsys):
    from comfyui_mmdit.tools.tiny_models import tiny_byt5_state_dict

    source = write_safetensors(tiny_byt5_state_dict(), tmp_path / "byt5_small_glyphxl_fp16.safetensors")
    target = tmp_path / "out" / "byt5-Q8_0.gguf"
    assert cli.main(["convert", str(source), str(target), "--type", "Q8_0"]) == 0
    assert "the converted ByT5 glyph text encoder uses the pack's built-in tokenizer" in capsys.readouterr().out
    assert load_text_encoder(target).encoder_kind == "byt5"


# --- the loaders' VALIDATE_INPUTS -------------------------------------------------------------------------
def test_validate_inputs_checks_each_file_version_once(tmp_path, model_set, monkeypatch):
    from comfyui_mmdit.nodes import vae as vae_nodes

    models = models_with(tmp_path, model_set, VAE)
    set_host(StandaloneHost(models_dir=models, device="cpu"))
    check_cache.forget()
    reads = []
    original = vae_nodes.read_vae

    def counting(path):
        reads.append(path)
        return original(path)

    monkeypatch.setattr(vae_nodes, "read_vae", counting)
    validate = NODES["MMDiTVAELoader"].VALIDATE_INPUTS
    assert validate(VAE[1]) is True and validate(VAE[1]) is True
    assert len(reads) == 1  # queued again: nothing re-read
    path = models / "vae" / VAE[1]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert validate(VAE[1]) is True and len(reads) == 2  # a changed file is checked again
    truncate(path)
    assert "is truncated" in validate(VAE[1])


def test_validate_inputs_refuses_a_name_the_folder_does_not_list(tmp_path, model_set):
    set_host(StandaloneHost(models_dir=models_with(tmp_path, model_set, VAE), device="cpu"))
    assert NODES["MMDiTVAELoader"].VALIDATE_INPUTS("qwen_image_vea.safetensors") == (
        "'qwen_image_vea.safetensors' is not in the vae models folder (did you mean 'qwen_image_vae.safetensors'?)")
    assert "is not in the diffusion_models models folder, which holds no model files" in \
        NODES["MMDiTModelLoader"].VALIDATE_INPUTS("x.safetensors")
    assert NODES["MMDiTModelLoader"].VALIDATE_INPUTS(None) is True  # a linked name is checked when it runs


def _image_to_image(workflow):
    """LoadImage -> MMDiTVAEEncode -> the sampler at denoise 0.6, instead of the empty latent."""
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    workflow["11"] = {"class_type": "MMDiTVAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["7", 0], "tiling": "auto",
                                                            "tile_size": 512, "tile_overlap": 128}}
    workflow["6"]["inputs"].update(latent_image=["11", 0], denoise=0.6)
    del workflow["5"]


def test_a_run_reads_images_from_the_input_folder(tmp_path, capsys, model_set):
    """Image-to-image headless: LoadImage reads --input as ComfyUI reads input/ (RGBA -> RGB + mask, EXIF
    orientation), and the output keeps the input's size."""
    from PIL import Image

    models = models_with(tmp_path, model_set, DIT, TEXT_ENCODER, VAE)
    inputs = tmp_path / "pictures"
    inputs.mkdir()
    Image.new("RGBA", (80, 48), (200, 30, 30, 128)).save(inputs / "photo.png")
    code = cli.main(["run", str(workflow_file(tmp_path, _image_to_image)), "--models", str(models),
                     "--input", str(inputs), "--output", str(tmp_path / "out"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (png,) = (tmp_path / "out" / "MMDiT").glob("qwen_image_*.png")
    assert Image.open(png).size == (80, 48)

    code = cli.main(["run", str(workflow_file(tmp_path, _image_to_image)), "--models", str(models),
                     "--input", str(tmp_path / "empty"), "--device", "cpu"])
    refused(code, capsys.readouterr().err, "node 10 (LoadImage): input 'image': \"photo.png\" is not one of the choices")


def test_load_image_is_comfyuis(tmp_path):
    from PIL import Image

    from comfyui_mmdit.nodes.host.workflow_runner import CoreLoadImage

    Image.new("RGBA", (6, 4), (255, 0, 0, 64)).save(tmp_path / "a.png")
    Image.new("L", (5, 3), 128).save(tmp_path / "grey.png")
    set_host(StandaloneHost(models_dir=tmp_path, device="cpu", input_dir=tmp_path))
    try:
        assert CoreLoadImage.INPUT_TYPES()["required"]["image"][0] == ["a.png", "grey.png"]
        image, mask = CoreLoadImage().load("a.png")
        assert image.shape == (1, 4, 6, 3) and torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
        assert mask.shape == (1, 4, 6) and torch.allclose(mask, torch.full_like(mask, 1 - 64 / 255))
        image, mask = CoreLoadImage().load("grey.png")  # grey scale: three equal channels, no transparency
        assert image.shape == (1, 3, 5, 3) and torch.allclose(image, torch.full_like(image, 128 / 255))
        assert mask.shape == (1, 64, 64) and not mask.any()
    finally:
        set_host(None)


# --- the edit workflows headless: input images, and stand-ins for missing ones in demo mode ---------------
EDIT = ROOT / "workflows" / "api" / "qwen_image_edit.api.json"
EDIT_MULTI = ROOT / "workflows" / "api" / "qwen_image_edit_multi.api.json"
EDIT_DIT = ("diffusion_models", "qwen_image_edit_2511_bf16.safetensors")


def edit_workflow_file(tmp_path, shipped, resolution=None, name="edit.api.json"):
    """A shipped edit workflow at 2 steps (and the resolution policy given: the multi-image one's official
    policy rescales each image to about a megapixel, too slow for a test on tiny CPU models)."""
    workflow = json.loads(shipped.read_text())
    (reference,) = [n for n in workflow.values() if n["class_type"] == "MMDiTReferenceImages"]
    (sampler,) = [n for n in workflow.values() if n["class_type"] == "MMDiTSampler"]
    sampler["inputs"]["steps"] = 2
    if resolution:
        reference["inputs"]["resolution"] = resolution
    path = tmp_path / name
    path.write_text(json.dumps(workflow))
    return path


def run_edit(capsys, tmp_path, workflow, models, inputs, *extra):
    return run(capsys, tmp_path, workflow, models, "--input", str(inputs), *extra)


def saved_size(tmp_path, prefix):
    from PIL import Image

    (png,) = (tmp_path / "out" / "MMDiT").glob(f"{prefix}_*.png")
    return Image.open(png).size


def test_edit_workflow_on_a_fresh_clone_stands_in_for_its_model_files_and_its_image(tmp_path, capsys):
    """No model file and no input image: the demo runs with tiny models and a generated image (200x136,
    native policy: cropped to 192x128 whole 16-pixel cells), and the banner says both; nothing is written
    into the input folder."""
    (tmp_path / "models").mkdir()
    inputs = tmp_path / "input"
    code, out, err = run_edit(capsys, tmp_path, edit_workflow_file(tmp_path, EDIT), tmp_path / "models", inputs)
    assert code == 0, err
    assert "DEMO MODE: none of the workflow's model files were found" in out
    assert "GENERATED stand-in images (coloured shapes, not your pictures) replace the input images missing " \
           f"from {inputs}:" in out
    assert f"edit_input.png  (stand-in: {tmp_path / 'demo' / 'input' / 'edit_input.png'})" in out
    assert "PIPELINE CHECK, NOT A PICTURE" in out
    assert "200x136 cropped to 192x128" in err
    assert saved_size(tmp_path, "qwen_image_edit") == (192, 128)
    assert not inputs.exists()


def test_edit_workflow_in_demo_mode_reads_the_given_images(tmp_path, capsys):
    """All three pictures given in --input (RGBA and grey scale, which LoadImage reads as RGB as ComfyUI
    does, and RGB): the demo replaces only the model files, and the output takes the last picture's size
    (2509/2511)."""
    from PIL import Image

    (tmp_path / "models").mkdir()
    inputs = tmp_path / "pictures"
    inputs.mkdir()
    Image.new("RGBA", (96, 64), (200, 30, 30, 128)).save(inputs / "picture_1.png")
    Image.new("L", (64, 64), 90).save(inputs / "picture_2.png")
    Image.new("RGB", (80, 112), (20, 120, 200)).save(inputs / "picture_3.png")
    workflow = edit_workflow_file(tmp_path, EDIT_MULTI, resolution="native")
    code, out, err = run_edit(capsys, tmp_path, workflow, tmp_path / "models", inputs)
    assert code == 0, err
    assert "DEMO MODE" in out and "stand-in images" not in out and not (tmp_path / "demo" / "input").exists()
    assert "3 reference images (native), output 80x112" in err
    assert saved_size(tmp_path, "qwen_image_edit_multi") == (80, 112)


def test_edit_workflow_in_demo_mode_stands_in_only_for_the_missing_images(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "models").mkdir()
    inputs = tmp_path / "pictures"
    inputs.mkdir()
    Image.new("RGB", (48, 80), (20, 120, 200)).save(inputs / "picture_3.png")
    workflow = edit_workflow_file(tmp_path, EDIT_MULTI, resolution="native")
    code, out, err = run_edit(capsys, tmp_path, workflow, tmp_path / "models", inputs)
    assert code == 0, err
    assert "picture_1.png  (stand-in:" in out and "picture_2.png  (stand-in:" in out
    assert "picture_3.png  (stand-in:" not in out
    assert sorted(p.name for p in (tmp_path / "demo" / "input").iterdir()) == ["picture_1.png", "picture_2.png"]
    assert saved_size(tmp_path, "qwen_image_edit_multi") == (48, 80)  # the given Picture 3 was read


def test_missing_input_image_with_the_model_files_present(tmp_path, capsys, model_set):
    """Real files present: a missing image is a problem of the check (with a hint), not a demo; --demo then
    stands in for the image alone and says the models are real."""
    models = models_with(tmp_path, model_set, TEXT_ENCODER, VAE)
    shutil.copy(model_set / DIT[0] / DIT[1], models / EDIT_DIT[0] / EDIT_DIT[1])
    inputs = tmp_path / "pictures"
    workflow = edit_workflow_file(tmp_path, EDIT)
    code, out, err = run_edit(capsys, tmp_path, workflow, models, inputs)
    refused(code, err, "node 4 (LoadImage): input 'image': \"edit_input.png\" is not one of the choices",
            f"LoadImage reads images from the input folder {inputs} (--input DIR); put the images there, or pass "
            "--demo")
    code, out, err = run_edit(capsys, tmp_path, workflow, models, inputs, "--demo")
    assert code == 0, err
    assert f"DEMO MODE (--demo): every model file is present, but 1 input image is missing from {inputs}" in out
    assert "RANDOM-WEIGHT" not in out and "saved: " in out
    assert saved_size(tmp_path, "qwen_image_edit") == (192, 128)


def test_stand_in_images_are_small_distinct_and_only_for_plain_image_names(tmp_path):
    from PIL import Image

    from comfyui_mmdit.tools.demo import STAND_IN_SIZES, input_images, missing_input_images, write_stand_in_images

    workflow = json.loads(EDIT_MULTI.read_text())
    assert [(i.node_id, i.name) for i in input_images(workflow)] == [
        ("4", "picture_1.png"), ("5", "picture_2.png"), ("6", "picture_3.png")]
    missing = missing_input_images(workflow, tmp_path / "none")
    write_stand_in_images(missing, tmp_path / "stand_ins", workflow)
    images = [Image.open(tmp_path / "stand_ins" / f"picture_{i}.png") for i in (1, 2, 3)]
    assert [im.size for im in images] == list(STAND_IN_SIZES)
    import numpy as np

    colours = [len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) for im in images]
    assert all(im.mode == "RGB" for im in images) and min(colours) > 20, colours  # a picture, not a flat fill
    workflow["4"]["inputs"]["image"] = "../outside.png"
    workflow["5"]["inputs"]["image"] = "notes.txt"
    assert [i.name for i in missing_input_images(workflow, tmp_path / "none")] == ["picture_3.png"]


def test_demo_stand_in_for_a_2511_file_is_a_2511_model(tmp_path):
    """A stand-in named like Qwen-Image-Edit-2511 carries its marker, so a demo runs the variant it names."""
    from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    edit_2511 = write_tiny_component("diffusion_models", tmp_path / "qwen_image_edit_2511_bf16.safetensors")
    edit_2509 = write_tiny_component("diffusion_models", tmp_path / "qwen_image_edit_2509_bf16.safetensors")
    assert read_diffusion_model(edit_2511).config.zero_cond_t
    assert not read_diffusion_model(edit_2509).config.zero_cond_t


# --- the HunyuanImage 2.1 workflows headless: base then refiner, and the prompt enhancer before them --------
HUNYUAN_T2I = ROOT / "workflows" / "api" / "hunyuanimage21_t2i.api.json"
HUNYUAN_FULL = ROOT / "workflows" / "api" / "hunyuanimage21_full.api.json"


def small_hunyuan_workflow(tmp_path, shipped) -> tuple:
    """A shipped HunyuanImage 2.1 workflow at 64x96, 2 base and 2 refiner steps and (with the enhancer) a
    12-token rewrite: tiny CPU models, a pipeline check. Returns (path, workflow)."""
    workflow = json.loads(shipped.read_text())
    (latent,) = [n for n in workflow.values() if n["class_type"] == "MMDiTEmptyLatent"]
    latent["inputs"].update(aspect="custom (width x height)", width=64, height=96)
    for node in workflow.values():
        if node["class_type"] in ("MMDiTSampler", "MMDiTRefiner"):
            node["inputs"]["steps"] = 2
        if node["class_type"] == "MMDiTPromptEnhancer":
            node["inputs"]["max_new_tokens"] = 12
    path = tmp_path / shipped.name
    path.write_text(json.dumps(workflow))
    return path, workflow


@pytest.fixture
def prompts_read(monkeypatch):
    """The text each MMDiT Text Encode and MMDiT Refiner received, in the order they ran."""
    read = []
    encode, refine = NODES["MMDiTTextEncode"].encode, NODES["MMDiTRefiner"].refine

    def encoding(self, text_encoder, text):
        read.append(("encode", text))
        return encode(self, text_encoder, text)

    def refining(self, model, text_encoder, refiner_vae, prompt, *args, **kwargs):
        read.append(("refine", prompt))
        return refine(self, model, text_encoder, refiner_vae, prompt, *args, **kwargs)

    monkeypatch.setattr(NODES["MMDiTTextEncode"], "encode", encoding)
    monkeypatch.setattr(NODES["MMDiTRefiner"], "refine", refining)
    return read


@pytest.mark.parametrize("shipped", [HUNYUAN_T2I, HUNYUAN_FULL], ids=lambda p: p.name)
def test_hunyuan_workflows_run_headless_on_a_fresh_clone(tmp_path, capsys, prompts_read, shipped):
    """No model file present: stand-ins for every file (the refiner's DiT and VAE, and the enhancer's folder
    in the full workflow), the base stage, then the refiner on its latent with the same prompt; the refined
    image is saved and the base image previewed, both at the latent's size. The full workflow's rewritten
    prompt is what both stages read, and the command line prints it (and the empty reasoning)."""
    from PIL import Image

    (tmp_path / "models").mkdir()
    path, workflow = small_hunyuan_workflow(tmp_path, shipped)
    code, out, err = run(capsys, tmp_path, path, tmp_path / "models")
    assert code == 0, err
    full = shipped == HUNYUAN_FULL
    assert out.count("(stand-in: ") == (7 if full else 6)
    for name in ("diffusion_models/hunyuanimage2.1_refiner_bf16.safetensors",
                 "vae/hunyuan_image_refiner_vae_fp16.safetensors"):
        assert f"{name}  (stand-in: {tmp_path / 'demo' / name})" in out
    assert "HunyuanImage 2.1: 2 steps, cfg 3.50 (adaptive projected mix guidance)" in err
    assert "HunyuanImage 2.1 refiner: 2 steps, guidance 3.50, conditioning noise 0.25, 64x96" in err
    refined = tmp_path / "out" / "MMDiT" / ("hunyuanimage21_full_00001_.png" if full else "hunyuanimage21_00001_.png")
    base = tmp_path / "out" / "PreviewImage_00001_.png"
    assert f"pipeline check (demo weights): {refined}" in out and f"pipeline check (demo weights): {base}" in out
    assert Image.open(refined).size == Image.open(base).size == (64, 96)

    (encoded, _negative), refiner_prompt = [t for kind, t in prompts_read if kind == "encode"], \
        [t for kind, t in prompts_read if kind == "refine"]
    assert refiner_prompt == [encoded] and _negative == ""
    if not full:
        assert encoded == workflow["10"]["inputs"]["value"]
        assert "PreviewAny" not in out
        return
    assert "prompt_enhancers/HunyuanImage-2.1/reprompt  (stand-in: " in out
    assert "prompt enhancer (HunyuanImage 2.1, official instruction): 12 tokens" in err
    assert f"node 16 (PreviewAny) 'Rewritten prompt': {encoded}\n" in out
    assert "node 17 (PreviewAny) 'Reasoning (empty unless thinking is on)': (empty)" in out


def test_full_workflow_asks_before_running_the_reprompt_folders_tokenizer_code(tmp_path, capsys, calls):
    """HunyuanImage 2.1's reprompt folder as published names its tokenizer as code shipped with the model
    (tokenizer_config.json auto_map, tokenization_hy.py); the shipped full workflow leaves
    allow_tokenizer_code off, so the run stops before anything loads and says which switch runs it."""
    from comfyui_mmdit.tools.tiny_models import write_tiny_prompt_enhancer

    models = tmp_path / "models"
    folder, _ = write_tiny_prompt_enhancer(models / "prompt_enhancers" / "HunyuanImage-2.1" / "reprompt", "hunyuan")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_hy.HYTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    path, _ = small_hunyuan_workflow(tmp_path, HUNYUAN_FULL)
    code, out, err = run(capsys, tmp_path, path, models, "--demo")
    refused(code, err, "node 15 (MMDiTPromptEnhancer): ", "names a tokenizer that is custom code shipped with the model",
            "switch on allow_tokenizer_code")
    assert not (tmp_path / "demo" / "prompt_enhancers").exists()  # a present folder is never replaced
    assert calls == []
