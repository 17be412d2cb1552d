"""A tiny Qwen2-style tokenizer for tests and the demo (the real one is not downloadable here).

A byte-level BPE with a few hundred merges learned from the chat templates and sample prompts, saved as
vocab.json + merges.txt + tokenizer_config.json so that transformers reads it exactly like Qwen2.5's own
tokenizer folder, with Qwen's special tokens (<|im_start|>, <|im_end|>, ...) as single tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>"]
CORPUS = [
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:",
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image.",
    "system user assistant",
    "A cozy bookshop on a rainy evening, warm light spilling onto the wet street, a hand-painted sign.",
    "a photo of a cat sitting on a red chair, highly detailed, cinematic lighting",
    "a watercolor painting of mountains at sunrise with a lake in the foreground",
]
VOCAB_SIZE = 600


def write_tiny_qwen_tokenizer(folder) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.model.save(str(folder))  # vocab.json + merges.txt, deterministic for a fixed corpus

    first_special = tokenizer.get_vocab_size()
    added = {str(first_special + i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True}
             for i, token in enumerate(SPECIAL_TOKENS)}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def byt5_tokenizer():
    """A transformers ByT5Tokenizer as google/byt5-small's files (and the byt5_tokenizer/ ComfyUI ships)
    define it: <pad>, </s>, <unk> keep the whitespace around them (a bare ByT5Tokenizer() strips it)."""
    from transformers import AddedToken, ByT5Tokenizer

    def special(text):
        return AddedToken(text, lstrip=False, rstrip=False, normalized=True, special=True)

    return ByT5Tokenizer(eos_token=special("</s>"), pad_token=special("<pad>"), unk_token=special("<unk>"))


def write_byt5_tokenizer(folder) -> Path:
    """A ByT5 tokenizer folder like ComfyUI's byt5_tokenizer/ (no vocabulary file: bytes need none)."""
    folder = Path(folder)
    byt5_tokenizer().save_pretrained(str(folder))
    return folder


# A chat template in the ChatML form Qwen2.5 and Qwen3 use, with Qwen3's `enable_thinking` switch (off: the
# generation prompt already holds an empty think block, as the official HunyuanImage 2.1 reprompt call asks
# with enable_thinking=False). Only for the tiny test models: real models bring their own template.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
REASONING_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def write_tiny_chat_tokenizer(folder) -> Path:
    """The tiny Qwen tokenizer of write_tiny_qwen_tokenizer with a chat template and the reasoning tags
    (<think>, </think>, <answer>, </answer>) as single, non-special tokens, as chat models that reason have
    them: the tokenizer of the tiny prompt-enhancer models."""
    folder = write_tiny_qwen_tokenizer(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    first = max(int(i) for i in config["added_tokens_decoder"]) + 1
    for i, tag in enumerate(REASONING_TAGS):
        config["added_tokens_decoder"][str(first + i)] = {"content": tag, "lstrip": False, "normalized": False,
                                                          "rstrip": False, "single_word": False, "special": False}
    config["chat_template"] = TINY_CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2))
    return folder
