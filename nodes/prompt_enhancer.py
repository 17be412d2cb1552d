"""MMDiTPromptEnhancer: rewrite a prompt with a local chat language model before MMDiT Text Encode.

The model comes from models/prompt_enhancers/ (or models/LLM/): a Hugging Face folder, a single
safetensors file (also FP8) or a GGUF with its config.json and tokenizer beside it, or a llama.cpp GGUF
alone; see model_defs/prompt_enhancer/loading.py. It loads under the host's memory manager (inside ComfyUI:
a ModelPatcher, moved to the text-encoder device for the run) and, unless keep_loaded is on, is dropped
after the run, so its memory goes back before the diffusion model loads. One progress step per generated
token; ComfyUI's interrupt is checked before each token.

Defaults: the official HunyuanImage 2.1 reprompt call (hyimage/models/reprompt/reprompt.py) asks
`generate(max_new_tokens=2048)` with thinking off and otherwise the settings of the model's
generation_config.json; Hunyuan-7B's published recommendation (github Tencent-Hunyuan/Hunyuan-7B README:
do_sample, top_k 20, top_p 0.8, repetition_penalty 1.05, temperature 0.7) is what the node shows. The
PromptEnhancer project's own default is greedy (temperature 0). Seeded sampling equals transformers'
`generate` after `torch.manual_seed(seed)`, which is what the official pipeline does with its seed.
"""

from __future__ import annotations

import gc
import os
import weakref

from ..loaders.check_cache import fingerprint
from ..model_defs.prompt_enhancer import (TARGETS, SamplingSettings, enhance_prompt, instruction_for,
                                          read_enhancer)
from ..model_defs.prompt_enhancer.loading import build_enhancer
from .common import CATEGORY, files_or_placeholder, log
from .file_inputs import validate_model_file
from .host import get_host

FOLDER = "prompt_enhancers"
# Official HunyuanImage 2.1 reprompt call and Hunyuan-7B's recommended sampling (see the module docstring).
DEFAULTS = {"max_new_tokens": 2048, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}

# The model kept between runs when keep_loaded is on: {"key": ..., "loaded": LoadedEnhancer, "managed": handle}.
_kept: dict = {}


def _key(path, allow_code: bool, dtype) -> tuple:
    return (os.path.abspath(path), fingerprint(path), allow_code, str(dtype))


def _load(host, model_name: str, allow_code: bool):
    """(LoadedEnhancer, host handle): the kept one when it is this file, else loaded now (the kept one,
    if another, dropped first)."""
    path = host.full_path(FOLDER, model_name)
    dtype = host.module_dtype("text_encoder")
    key = _key(path, allow_code, dtype)
    if _kept.get("key") == key:
        return _kept["loaded"], _kept["managed"]
    release_kept()
    checked = read_enhancer(path, allow_tokenizer_code=allow_code)
    log.info("prompt enhancer: %s from %s; config from %s, tokenizer from %s", checked.description, path,
             checked.config_source, checked.tokenizer_source)
    suggested = {k: checked.generation_config[k] for k in ("do_sample", "temperature", "top_p", "top_k",
                                                            "repetition_penalty") if k in checked.generation_config}
    if suggested:
        log.info("prompt enhancer: the model's generation_config.json suggests %s", suggested)
    loaded = build_enhancer(checked, operations=host.operations("text_encoder"), dtype=dtype)
    return loaded, host.manage(loaded.model, "text_encoder", dtype)


def release_kept() -> None:
    """Drop the kept model (its memory is freed once nothing refers to it; ComfyUI holds only weak references)."""
    if _kept:
        model = weakref.ref(_kept["loaded"].model)
        _kept.clear()
        if model() is not None:
            gc.collect()  # reference cycles inside the model would otherwise hold it until the next collection


def _kv_cache_bytes(config, tokens: int, dtype) -> int:
    text = config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * tokens * dtype.itemsize


class MMDiTPromptEnhancer:
    DESCRIPTION = ("Rewrites a prompt with a local chat language model, as HunyuanImage 2.1's official pipeline "
                   "does before generating: HunyuanImage 2.1 uses the official rewriting instruction (for its "
                   "reprompt model / PromptEnhancer-7B); Qwen-Image and FLUX.2 use this pack's own. Any "
                   "instruction-tuned chat model works: a Hugging Face folder, a single safetensors file (also "
                   "FP8) or GGUF with its config.json and tokenizer in a folder named like the file, or a "
                   "llama.cpp GGUF. Nothing is downloaded. Same seed, same text.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "reasoning")
    OUTPUT_TOOLTIPS = ("The rewritten prompt: connect it to MMDiT Text Encode's text.",
                       "The model's reasoning (its think block), empty when it produced none.")
    FUNCTION = "enhance"
    FILE_INPUTS = {"model_name": FOLDER}

    @classmethod
    def INPUT_TYPES(cls):
        names = files_or_placeholder(get_host().folder_files(FOLDER), FOLDER)
        return {"required": {
            "model_name": (names, {"tooltip": "The language model in models/prompt_enhancers (or models/LLM): "
                                              "HunyuanImage 2.1's reprompt folder (PromptEnhancer-7B), or any "
                                              "chat model (Qwen2.5-7B-Instruct, ...), folder, safetensors, FP8 "
                                              "or GGUF."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                  "tooltip": "The prompt to rewrite."}),
            "target": (list(TARGETS), {"default": TARGETS[0],
                                       "tooltip": "The model the prompt is for: its rewriting instruction. "
                                                  "HunyuanImage 2.1: the official one; Qwen-Image, FLUX.2: the "
                                                  "pack's own."}),
            # No "control after generate": the editor would otherwise add one set to randomize on a new node,
            # and the same seed should give the same text until the user changes it.
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                             "tooltip": "Sampling seed (as torch.manual_seed before generate: the official "
                                        "pipeline's seed gives its rewrite)."}),
            "max_new_tokens": ("INT", {"default": DEFAULTS["max_new_tokens"], "min": 1, "max": 32768,
                                       "tooltip": "Token limit of the answer (official: 2048)."}),
            "temperature": ("FLOAT", {"default": DEFAULTS["temperature"], "min": 0.0, "max": 2.0, "step": 0.01,
                                      "tooltip": "0 = greedy (the same text for any seed; PromptEnhancer's "
                                                 "default). 0.7: Hunyuan-7B's recommendation."}),
            "top_p": ("FLOAT", {"default": DEFAULTS["top_p"], "min": 0.01, "max": 1.0, "step": 0.01,
                                "tooltip": "Nucleus sampling (1.0 = off)."}),
            "top_k": ("INT", {"default": DEFAULTS["top_k"], "min": 0, "max": 1000,
                              "tooltip": "Sample among the k most likely tokens (0 = off)."}),
            "repetition_penalty": ("FLOAT", {"default": DEFAULTS["repetition_penalty"], "min": 0.5, "max": 2.0,
                                             "step": 0.01, "tooltip": "1.0 = off."}),
        }, "optional": {
            "thinking": ("BOOLEAN", {"default": False,
                                     "tooltip": "Let a model that can reason think first (the chat template's "
                                                "enable_thinking; the official call turns it off). Its "
                                                "reasoning goes to the reasoning output."}),
            "keep_loaded": ("BOOLEAN", {"default": False,
                                        "tooltip": "Keep the language model in memory for the next run. Off: it "
                                                   "is dropped after the run, freeing its memory for the "
                                                   "diffusion model."}),
            "allow_tokenizer_code": ("BOOLEAN", {"default": False,
                                                 "tooltip": "Run tokenizer code shipped in the model folder "
                                                            "(Hunyuan-7B's tiktoken tokenizer is such code; the "
                                                            "official pipeline runs it). Off: such a folder is "
                                                            "refused."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name, allow_tokenizer_code=False):
        allow = bool(allow_tokenizer_code) if isinstance(allow_tokenizer_code, bool) else False
        return validate_model_file(FOLDER, model_name, lambda path: read_enhancer(path, allow).description)

    def enhance(self, model_name, prompt, target, seed, max_new_tokens, temperature, top_p, top_k,
                repetition_penalty, thinking=False, keep_loaded=False, allow_tokenizer_code=False):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt to rewrite is empty")
        host = get_host()
        instruction = instruction_for(target)
        settings = SamplingSettings(int(max_new_tokens), float(temperature), float(top_p), int(top_k),
                                    float(repetition_penalty), int(seed))
        settings.check()
        loaded, managed = _load(host, model_name, bool(allow_tokenizer_code))
        try:
            checked = loaded.file
            tokens = settings.max_new_tokens + 1024  # the answer and a generous prompt with its instruction
            if checked.context_length:
                tokens = min(tokens, checked.context_length)
            device = managed.load(_kv_cache_bytes(checked.config, tokens, loaded.dtype))
            progress = host.progress(settings.max_new_tokens, "prompt enhancer")
            result = enhance_prompt(loaded.model, loaded.tokenizer, prompt, instruction, settings,
                                    checked.stop_token_ids(), checked.context_length, bool(thinking), device,
                                    on_token=lambda _: progress.update(1),
                                    check_interrupt=host.throw_if_interrupted)
            left = settings.max_new_tokens - len(result.generation.tokens)
            if left > 0:
                progress.update(left)
        finally:
            if keep_loaded:
                _kept.update(key=_key(host.full_path(FOLDER, model_name), bool(allow_tokenizer_code), loaded.dtype),
                             loaded=loaded, managed=managed)
            else:
                release_kept()
                del loaded, managed
        log.info("prompt enhancer (%s, %s): %d tokens in %.1f s (%.1f tokens/s), %s", target,
                 "official instruction" if instruction.official else "the pack's instruction",
                 len(result.generation.tokens), result.seconds, result.tokens_per_second,
                 "stopped at the end of the answer" if result.generation.stopped == "stop_token"
                 else f"cut at the {len(result.generation.tokens)}-token limit")
        if result.fell_back:
            log.warning("prompt enhancer: the model's answer held no prompt; the original prompt is used "
                        "(as the official code does). Its answer: %r", result.raw[:500])
        return (result.prompt, result.reasoning)
