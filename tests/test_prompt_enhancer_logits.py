"""The prompt enhancer's token loop asks the model for the last position's logits only, as transformers'
`generate` does (`logits_to_keep=1`): the prompt's forward then makes [1, 1, V] logits, not [1, L, V]
(found by bench/bench_prompt_enhancer.py: at hidden 512, a 32k vocabulary and a 1280-token prompt the
loop's peak memory was 167 MB against generate's 46 MB, and its prompt forward slower). A model whose
forward does not take the argument still runs."""

import torch

from comfyui_mmdit.loaders.tokenizers import load_tokenizer
from comfyui_mmdit.model_defs.prompt_enhancer import SamplingSettings, chat_input_ids, generate_tokens, instruction_for
from comfyui_mmdit.model_defs.prompt_enhancer.generation import last_position_only
from comfyui_mmdit.tools.tiny_models import tiny_chat_lm

SETTINGS = SamplingSettings(max_new_tokens=12, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                            seed=5)


class NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (older or custom model code)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True, return_dict=True):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                          use_cache=use_cache, return_dict=return_dict)


def test_prompt_forward_computes_the_last_position_only(tmp_path):
    model, tokenizer_dir = tiny_chat_lm("qwen2", seed=3, tokenizer_dir=tmp_path / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = torch.tensor([chat_input_ids(tokenizer, instruction_for("HunyuanImage 2.1").messages("a red chair"))])
    assert ids.shape[1] > 100
    shapes = []
    hook = model.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.logits.shape)))
    try:
        tokens = generate_tokens(model, ids, SETTINGS).tokens
    finally:
        hook.remove()
    vocab = model.config.vocab_size
    assert shapes and all(shape == (1, 1, vocab) for shape in shapes), shapes[:2]

    torch.manual_seed(SETTINGS.seed)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=[], pad_token_id=0,
                              **SETTINGS.generate_kwargs())[0, ids.shape[1]:].tolist()
    assert tokens == expected  # generate with no stop token runs to the limit, as the loop without stop ids

    assert last_position_only(model) == {"logits_to_keep": 1}
    plain = NoLogitsToKeep(model)
    assert last_position_only(plain) == {}
    assert generate_tokens(plain, ids, SETTINGS).tokens == tokens
