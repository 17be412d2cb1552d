"""The prompt enhancer on tiny random chat LMs (Qwen2 and Hunyuan dense, the HunyuanImage 2.1 reprompt
model's architecture) with the tiny chat tokenizer:

* our token loop equals transformers' `generate` token for token, greedy and with the official sampling
  settings after `torch.manual_seed(seed)` (as the official pipeline seeds it), for every file form: a
  Hugging Face folder, a single safetensors file, FP8 and GGUF (kept quantized; compared with a model
  holding the same dequantized weights, computed independently: float8 * scale from the file, gguf-py's
  own dequantizer, and transformers' own GGUF loading);
* same seed, same text; another seed, another text; the token limit and the context are honoured; the
  reasoning and the prompt are parsed; bad files and inputs are refused with clear messages;
* nothing touches the network (HF_HUB_OFFLINE=1 and every socket connection refused and recorded);
* the node runs on the standalone host (progress per token, interrupt, memory released unless kept) and
  in `cli.py run`, where its STRING feeds MMDiT Text Encode.
"""

import json
import shutil
import socket
import weakref

import numpy as np
import pytest
import torch

from comfyui_mmdit import cli
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.quant.tensor import is_quantized
from comfyui_mmdit.model_defs.prompt_enhancer import (TARGETS,
                                                      SamplingSettings, chat_input_ids, enhance_prompt,
                                                      generate_tokens, instruction_for, load_enhancer,
                                                      official_postprocess, parse_answer, read_enhancer)
from comfyui_mmdit.model_defs.prompt_enhancer.enhance import check_context
from comfyui_mmdit.model_defs.prompt_enhancer.generation import processed_scores
from comfyui_mmdit.model_defs.prompt_enhancer.loading import gguf_names
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes import prompt_enhancer as enhancer_node
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import (tiny_qwen_dit_state_dict, write_safetensors,
                                             write_tiny_prompt_enhancer)

from helpers import ROOT

OFFICIAL = SamplingSettings(max_new_tokens=24, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                            seed=649151)
GREEDY = SamplingSettings(max_new_tokens=24, repetition_penalty=1.05)
PROMPT = "a cat on a red chair"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """HF_HUB_OFFLINE semantics, and every attempt to open a connection refused and recorded."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted in a test: {address}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    try:
        import httpx

        def refuse_http(self, request, *args, **kwargs):
            attempts.append(str(request.url))
            raise OSError(f"network access attempted in a test: {request.url}")

        monkeypatch.setattr(httpx.Client, "send", refuse_http)
    except ImportError:
        pass
    yield attempts
    assert attempts == [], f"the enhancer tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny models in every form: {(kind, form): (path, transformers model with the same weights)}."""
    root = tmp_path_factory.mktemp("enhancers")
    out = {}
    for kind, form, name in (("qwen2", "folder", "qwen"), ("qwen2", "safetensors", "qwen.safetensors"),
                             ("qwen2", "fp8", "qwen_fp8.safetensors"), ("qwen2", "gguf_alone", "qwen-Q8_0.gguf"),
                             ("hunyuan", "folder", "reprompt"), ("hunyuan", "gguf", "reprompt-Q8_0.gguf")):
        out[(kind, form)] = write_tiny_prompt_enhancer(root / name, kind, form, seed=7)
    return out


@pytest.fixture(scope="module")
def loaded(files):
    return {key: load_enhancer(path) for key, (path, _) in files.items()}


def _input_ids(enhancer, target="HunyuanImage 2.1", prompt=PROMPT):
    return torch.tensor([chat_input_ids(enhancer.tokenizer, instruction_for(target).messages(prompt))])


def _reference_tokens(model, ids, settings, stop_ids):
    torch.manual_seed(settings.seed)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=list(stop_ids), pad_token_id=0,
                         **settings.generate_kwargs())
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("kind", ["qwen2", "hunyuan"])
@pytest.mark.parametrize("settings", [GREEDY, OFFICIAL], ids=["greedy", "official-sampling"])
def test_tokens_equal_transformers_generate(files, loaded, kind, settings):
    enhancer, (_, reference) = loaded[(kind, "folder")], files[(kind, "folder")]
    ids = _input_ids(enhancer)
    stops = enhancer.file.stop_token_ids()
    ours = generate_tokens(enhancer.model, ids, settings, stops).tokens
    assert ours == _reference_tokens(reference, ids, settings, stops)
    with torch.no_grad():  # the network itself: transformers' class, our layers and assignment
        assert torch.equal(enhancer.model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("settings", [GREEDY, OFFICIAL, SamplingSettings(8, 1.3, 0.5, 0, 0.9),
                                      SamplingSettings(8, 0.2, 1.0, 3, 1.0)], ids=str)
def test_scores_equal_transformers_logits_processors(settings):
    """Penalty, temperature, top-k and top-p exactly as transformers' processors, in generate's order."""
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 300, generator=g) * 4
    seen = torch.randint(0, 300, (1, 40), generator=g)
    expected = logits.clone()
    if settings.repetition_penalty != 1.0:
        expected = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)(seen, expected)
    if settings.sampling:
        for processor, on in ((TemperatureLogitsWarper(settings.temperature or 1.0), settings.temperature != 1.0),
                              (TopKLogitsWarper(max(settings.top_k, 1)), settings.top_k > 0),
                              (TopPLogitsWarper(settings.top_p), settings.top_p < 1.0)):
            if on:
                expected = processor(seen, expected)
    assert torch.equal(processed_scores(logits, seen, settings), expected)


def _dequantized_fp8(path):
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.endswith(".scale_weight") or key == "scaled_fp8":
                continue
            tensor = f.get_tensor(key)
            scale_key = key[: -len("weight")] + "scale_weight"
            out[key] = tensor.float() * f.get_tensor(scale_key).float() if scale_key in f.keys() else tensor.float()
    return out


def _dequantized_gguf(path, model):
    """The file's tensors dequantized by gguf-py (not this pack's dequantizer), under the model's names."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    mapping = gguf_names(type("File", (), {"metadata": {"general.architecture": reader.fields[
        "general.architecture"].contents()}, "keys": lambda self: [t.name for t in reader.tensors],
        "path": path})(), model.state_dict())
    out = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[mapping[tensor.name]] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(
            tuple(reversed([int(d) for d in tensor.shape])))
    return out


def _with_weights(model, state):
    import copy

    clone = copy.deepcopy(model)
    missing, unexpected = clone.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return clone.eval()


@pytest.mark.parametrize("key", [("qwen2", "safetensors"), ("qwen2", "fp8"), ("qwen2", "gguf_alone"),
                                 ("hunyuan", "gguf")], ids=lambda k: "-".join(k))
def test_every_file_form_matches_generate_on_its_weights(files, loaded, key):
    path, model = files[key]
    enhancer = loaded[key]
    kind, form = key
    if form == "fp8":
        model = _with_weights(model, _dequantized_fp8(path))
    elif form.startswith("gguf"):
        model = _with_weights(model, _dequantized_gguf(path, model))
    if form != "safetensors":  # kept quantized in memory, dequantized per layer
        assert is_quantized(enhancer.model.model.layers[0].mlp.down_proj.weight)
    ids = _input_ids(enhancer)
    with torch.no_grad():
        difference = (enhancer.model(ids).logits - model(ids).logits).abs().max().item()
    assert difference <= 1e-5
    stops = enhancer.file.stop_token_ids()
    for settings in (GREEDY, OFFICIAL):
        assert generate_tokens(enhancer.model, ids, settings, stops).tokens == _reference_tokens(
            model, ids, settings, stops)


def test_gguf_alone_reads_its_config_and_tokenizer_from_its_metadata(loaded):
    """A llama.cpp GGUF with nothing beside it: transformers reads config and tokenizer from its metadata,
    and they are the ones the model was made with (the chat input is the same token for token)."""
    alone, folder = loaded[("qwen2", "gguf_alone")], loaded[("qwen2", "folder")]
    assert "GGUF metadata" in alone.file.config_source and "GGUF metadata" in alone.file.tokenizer_source
    assert _input_ids(alone).tolist() == _input_ids(folder).tolist()
    assert alone.file.stop_token_ids() == folder.file.stop_token_ids()
    assert alone.file.context_length == folder.file.context_length == 1024


def test_tied_embeddings_stay_one_parameter(loaded):
    model = loaded[("hunyuan", "folder")].model  # the reprompt model's architecture ties its output to the input
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_seeds_and_limits(loaded):
    enhancer = loaded[("qwen2", "folder")]
    instruction = instruction_for("Qwen-Image")

    def rewrite(settings):
        return enhance_prompt(enhancer.model, enhancer.tokenizer, PROMPT, instruction, settings,
                              enhancer.file.stop_token_ids(), enhancer.file.context_length)

    first, again = rewrite(OFFICIAL), rewrite(OFFICIAL)
    other = rewrite(SamplingSettings(24, 0.7, 0.8, 20, 1.05, seed=OFFICIAL.seed + 1))
    assert first.raw == again.raw and first.prompt == again.prompt
    assert other.raw != first.raw
    assert rewrite(SamplingSettings(24, seed=1)).raw == rewrite(SamplingSettings(24, seed=2)).raw  # greedy
    assert len(first.generation.tokens) <= 24
    five = rewrite(SamplingSettings(5, 1.0, seed=3))
    assert len(five.generation.tokens) == 5 and five.generation.stopped == "limit"


def test_context_is_honoured():
    assert check_context(1000, SamplingSettings(2048), 1024).max_new_tokens == 24
    assert check_context(10, SamplingSettings(50), None).max_new_tokens == 50
    with pytest.raises(ValueError, match="1024 tokens, and the model's context holds 1024"):
        check_context(1024, SamplingSettings(10), 1024)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1.*top_p must be in"):
        SamplingSettings(0, top_p=0.0).check()


@pytest.mark.parametrize("text, prompt, reasoning", [
    ("<think>\n\n</think>\n<answer>\nA red chair.\n</answer><|im_end|>", "A red chair.", ""),
    ("<think>The user wants a cat.</think>\n<answer>A cat.</answer>", "A cat.", "The user wants a cat."),
    ("A plain answer.<|im_end|>", "A plain answer.", ""),
    ("<think>Reasoning first.</think>\n\nThe prompt.", "The prompt.", "Reasoning first."),
    ("The model's reasoning.\n</think>\nThe rewritten prompt.", "The rewritten prompt.", "The model's reasoning."),
    ("<think>cut off while thinking", "original", "cut off while thinking"),
    ("<think>done</think><answer>cut off in the answer", "cut off in the answer", "done"),
    ("<|im_end|>", "original", ""),
])
def test_answers_are_parsed(text, prompt, reasoning):
    parsed = parse_answer(text, "original", ["<|im_end|>", "<|endoftext|>"])
    assert (parsed.prompt, parsed.reasoning) == (prompt, reasoning)
    assert parsed.fell_back == (prompt == "original")


def test_official_quote_normalisation():
    assert official_postprocess("a sign reading 'OPEN' and ‘CLOSED’, it's") == \
        'a sign reading "OPEN" and “CLOSED”, it\'s'


class ScriptedModel(torch.nn.Module):
    """A 'causal LM' whose next token is always the next one of `script` (for the reasoning output)."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.vocab, self.anchor = list(script), vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, past_key_values=None, **kwargs):
        step = 0 if past_key_values is None else past_key_values + 1
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[0, -1, self.script[min(step, len(self.script) - 1)]] = 10.0
        return type("Out", (), {"logits": logits, "past_key_values": step})()


def test_reasoning_and_prompt_from_a_thinking_answer(loaded):
    tokenizer = loaded[("qwen2", "folder")].tokenizer
    answer = "<think>The user wants a cat.</think>\n<answer>A cat sits on a 'red' chair.</answer>"
    script = tokenizer.encode(answer) + [tokenizer.eos_token_id]
    model = ScriptedModel(script, len(tokenizer))
    result = enhance_prompt(model, tokenizer, PROMPT, instruction_for("HunyuanImage 2.1"), SamplingSettings(200),
                            [tokenizer.eos_token_id], thinking=True)
    assert result.reasoning == "The user wants a cat."
    assert result.prompt == 'A cat sits on a "red" chair.'  # the official quote normalisation (HunyuanImage)
    assert result.generation.stopped == "stop_token" and result.generation.tokens == script
    plain = chat_input_ids(tokenizer, instruction_for("FLUX.2").messages(PROMPT), thinking=False)
    thinking = chat_input_ids(tokenizer, instruction_for("FLUX.2").messages(PROMPT), thinking=True)
    assert tokenizer.decode(plain).endswith("<think>\n\n</think>\n\n") and plain[:len(thinking)] == thinking


def test_instructions():
    assert TARGETS == ("HunyuanImage 2.1", "Qwen-Image", "FLUX.2")
    official = instruction_for("HunyuanImage 2.1")
    assert official.official and official.text.startswith("你是一位图像生成提示词撰写专家")
    assert official.text.endswith("6 结尾点题，必须用一句话总结图像的整体风格或类型。")
    assert not instruction_for("Qwen-Image").official and not instruction_for("FLUX.2").official
    assert official.messages("x") == [{"role": "system", "content": official.text}, {"role": "user", "content": "x"}]


# --- refusals ------------------------------------------------------------------------------------------------
def _copy(files, key, tmp_path, name="copy"):
    source = files[key][0]
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def test_a_folder_without_a_tokenizer_is_refused(files, tmp_path):
    folder = _copy(files, ("qwen2", "folder"), tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelFileError, match="needs a tokenizer, and none was found"):
        read_enhancer(folder)


def test_a_tokenizer_without_a_chat_template_is_refused(files, tmp_path):
    folder = _copy(files, ("qwen2", "folder"), tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="without a chat template"):
        read_enhancer(folder)


def test_tokenizer_code_is_not_run_unless_allowed(files, tmp_path):
    folder = _copy(files, ("qwen2", "folder"), tmp_path)
    (folder / "tokenization_tiny.py").write_text(
        "from transformers import Qwen2Tokenizer\n\nclass TinyTokenizer(Qwen2Tokenizer):\n    ran = True\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="TinyTokenizer", auto_map={"AutoTokenizer": ["tokenization_tiny.TinyTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="custom code shipped with the model.*allow_tokenizer_code"):
        read_enhancer(folder)
    assert getattr(read_enhancer(folder, allow_tokenizer_code=True).tokenizer, "ran", False)


def test_a_config_that_is_no_causal_lm_is_refused(files, tmp_path):
    folder = _copy(files, ("qwen2", "folder"), tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 64, "num_layers": 1}))
    with pytest.raises(ModelFileError, match="is not a causal language model"):
        read_enhancer(folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "QwenImageTransformer2DModel"}))
    with pytest.raises(ModelFileError, match="is not a configuration transformers can read"):
        read_enhancer(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": 3,
                                                    "layer_types": ["full_attention"]}))
    with pytest.raises(ModelFileError, match="is not a configuration transformers can read.*layer_types"):
        read_enhancer(folder)


def test_a_diffusion_model_file_is_refused(tmp_path):
    path = write_safetensors(tiny_qwen_dit_state_dict(), tmp_path / "qwen_image_bf16.safetensors")
    with pytest.raises(ModelFileError, match="has no model configuration: no config.json was found"):
        read_enhancer(path)


def test_weights_that_do_not_fit_the_config_are_refused(files, tmp_path):
    folder = _copy(files, ("qwen2", "folder"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="does not fit the Qwen2ForCausalLM language model: 6 tensors have the "
                                             "wrong shape"):
        read_enhancer(folder)


def test_permuted_llama_gguf_is_refused():
    fake = type("File", (), {"metadata": {"general.architecture": "llama"}, "path": "x.gguf", "keys": lambda s: []})()
    with pytest.raises(ModelFileError, match="stores permuted"):
        gguf_names(fake, {})


# --- the node ------------------------------------------------------------------------------------------------
@pytest.fixture
def node_models(files, tmp_path):
    models = tmp_path / "models"
    (models / "LLM").mkdir(parents=True)
    shutil.copytree(files[("hunyuan", "folder")][0], models / "LLM" / "PromptEnhancer-7B")
    set_host(StandaloneHost(models_dir=models, device="cpu"))
    yield models
    enhancer_node.release_kept()
    set_host(None)


def _run_node(**changes):
    inputs = dict(model_name="PromptEnhancer-7B", prompt=PROMPT, target="HunyuanImage 2.1", seed=5,
                  max_new_tokens=12, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    return NODES["MMDiTPromptEnhancer"]().enhance(**{**inputs, **changes})


def test_node_defaults_are_the_official_values():
    required = NODES["MMDiTPromptEnhancer"].INPUT_TYPES()["required"]
    assert {name: required[name][1]["default"] for name in enhancer_node.DEFAULTS} == {
        "max_new_tokens": 2048, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert NODES["MMDiTPromptEnhancer"].RETURN_TYPES == ("STRING", "STRING")


def test_node_rewrites_with_progress_and_releases_the_model(node_models, monkeypatch):
    host = enhancer_node.get_host()
    steps, kept = [], []
    original_progress, original_manage = host.progress, host.manage
    monkeypatch.setattr(host, "progress", lambda total, label="": steps.append(total) or original_progress(total, label))
    monkeypatch.setattr(host, "manage", lambda module, kind, dtype=None: kept.append(weakref.ref(module))
                        or original_manage(module, kind, dtype))
    assert NODES["MMDiTPromptEnhancer"].VALIDATE_INPUTS("PromptEnhancer-7B") is True
    prompt, reasoning = _run_node()
    assert isinstance(prompt, str) and prompt and reasoning == ""
    assert _run_node() == (prompt, reasoning)  # same seed, same text
    assert steps == [12, 12]
    assert all(ref() is None for ref in kept)  # dropped after each run (keep_loaded off)

    kept.clear()
    _run_node(keep_loaded=True)
    _run_node(keep_loaded=True)
    assert len(kept) == 1 and kept[0]() is not None  # loaded once, kept
    enhancer_node.release_kept()
    assert kept[0]() is None


def test_node_stops_when_interrupted(node_models, monkeypatch):
    host = enhancer_node.get_host()
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(host, "throw_if_interrupted", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run_node(max_new_tokens=50)
    assert len(calls) == 4


def test_node_refuses_bad_inputs(node_models):
    with pytest.raises(ValueError, match="empty"):
        _run_node(prompt="  ")
    with pytest.raises(ValueError, match="top_p must be in"):
        _run_node(top_p=0.0)
    with pytest.raises(ValueError, match="context holds"):
        _run_node(prompt="word " * 1500)
    assert "not in the prompt_enhancers models folder" in NODES["MMDiTPromptEnhancer"].VALIDATE_INPUTS("nope")


def test_cli_run_feeds_the_rewritten_prompt_to_text_encode(tmp_path, monkeypatch, capsys):
    """The shipped Qwen-Image workflow with the enhancer before its prompt, run headless in demo mode (tiny
    stand-ins for every model file, the enhancer's included): its STRING reaches MMDiT Text Encode."""
    workflow = json.loads((ROOT / "workflows" / "api" / "qwen_image_t2i.api.json").read_text())
    workflow["5"]["inputs"].update(aspect="custom (width x height)", width=64, height=48)
    workflow["6"]["inputs"].update(steps=1)
    workflow["20"] = {"class_type": "MMDiTPromptEnhancer", "inputs": {
        "model_name": "PromptEnhancer-7B", "prompt": workflow["3"]["inputs"]["text"], "target": "Qwen-Image",
        "seed": 1, "max_new_tokens": 8, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}}
    workflow["3"]["inputs"]["text"] = ["20", 0]
    path = tmp_path / "enhanced.api.json"
    path.write_text(json.dumps(workflow))
    (tmp_path / "models").mkdir()
    encoded = []
    encode = NODES["MMDiTTextEncode"].encode
    monkeypatch.setattr(NODES["MMDiTTextEncode"], "encode", lambda self, text_encoder, text: encoded.append(text)
                        or encode(self, text_encoder, text))
    monkeypatch.setattr(enhancer_node, "enhance_prompt", _recording(enhancer_node.enhance_prompt, produced := []))
    code = cli.main(["run", str(path), "--models", str(tmp_path / "models"), "--output", str(tmp_path / "out"),
                     "--demo-dir", str(tmp_path / "demo"), "--device", "cpu", "--demo"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "demo" / "prompt_enhancers" / "PromptEnhancer-7B" / "config.json").is_file()
    assert produced and encoded[0] == produced[0] and encoded[1] == " "
    assert list((tmp_path / "out").rglob("*.png"))
    set_host(None)


def _recording(function, produced):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        produced.append(result.prompt)
        return result
    return wrapper
