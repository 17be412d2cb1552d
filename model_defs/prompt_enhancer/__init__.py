"""The prompt enhancer: rewrite a prompt with a local instruction-tuned language model before encoding it.

instructions.py  what the model is asked to do per target family (HunyuanImage 2.1's official instruction;
                 the pack's own for Qwen-Image and FLUX.2), and the facts they come from;
loading.py       model files -> transformers' causal LM (HF folder, single file, FP8, GGUF), never downloading;
generation.py    the seeded token loop, equal to transformers' `generate` token for token;
parsing.py       the reasoning and the rewritten prompt in the model's answer;
enhance.py       the three together: a prompt in, the rewritten prompt and the reasoning out.

Facts from the official code this follows (read, not copied):

* The model. HunyuanImage 2.1's reprompt model is the `reprompt/` folder of the tencent/HunyuanImage-2.1
  release (hyimage/models/model_zoo.py HUNYUANIMAGE_REPROMPT loads `<root>/reprompt`); the PromptEnhancer
  project (github Hunyuan-PromptEnhancer/PromptEnhancer) publishes the same folder as PromptEnhancer-7B. It
  is a Hunyuan-7B dense model (HunYuanDenseV1ForCausalLM, model_type hunyuan_v1_dense, which transformers 5
  implements) loaded with AutoModelForCausalLM / AutoTokenizer (`trust_remote_code=True`: Hunyuan-7B's
  tokenizer is tiktoken-based custom code). The later PromptEnhancer-32B (reprompt_32b.py) is a
  Qwen2.5-VL-32B vision-language model with its own instruction; it is not a causal LM for this loader.
* The chat input. [system: the instruction, user: the prompt] through `tokenizer.apply_chat_template(
  messages, tokenize=True, add_generation_prompt=True, return_tensors="pt", enable_thinking=False)`
  (hyimage/models/reprompt/reprompt.py; the same in PromptEnhancer's inference/prompt_enhancer.py).
* Generation settings. HunyuanImage 2.1 (reprompt.py, since commit 0c44d1e "Reprompt randomness"):
  `model.generate(input, max_new_tokens=2048)` with no sampling arguments, so the folder's
  generation_config.json decides; before that commit it passed do_sample=False (greedy). The same commit
  made the pipeline call `torch.manual_seed(seed)` before rewriting (hunyuanimage_pipeline.py), so the
  rewrite follows the generation seed. Hunyuan-7B's README (github Tencent-Hunyuan/Hunyuan-7B) recommends
  do_sample with top_k 20, top_p 0.8, repetition_penalty 1.05, temperature 0.7 (the node's defaults).
  PromptEnhancer's predict(): temperature 0 = greedy (its default), top_p 1.0, max_new_tokens 512; its
  README example: temperature 0.7, top_p 0.9, max_new_tokens 256.
* Extracting the answer. reprompt.py decodes the whole output and takes the first `<answer>(.*?)</answer>`
  (falling back to the user's prompt on any failure); PromptEnhancer decodes the new tokens only, takes the
  first answer block, else the text with `<think>...</think>` removed, else the original prompt; Hunyuan-7B
  answers `<think>...</think>` then `<answer>...</answer>` (its README). Both then apply
  `replace_single_quotes`. reprompt_32b.py takes what follows the closing think tag.
"""

from .enhance import EnhancedPrompt, chat_input_ids, enhance_prompt
from .generation import GenerationResult, SamplingSettings, generate_tokens
from .instructions import INSTRUCTIONS, TARGETS, Instruction, instruction_for, official_postprocess
from .loading import EnhancerFile, LoadedEnhancer, build_enhancer, load_enhancer, read_enhancer
from .parsing import ParsedAnswer, parse_answer

__all__ = [
    "EnhancedPrompt", "EnhancerFile", "GenerationResult", "INSTRUCTIONS", "Instruction", "LoadedEnhancer",
    "ParsedAnswer", "SamplingSettings", "TARGETS", "build_enhancer", "chat_input_ids", "enhance_prompt",
    "generate_tokens", "instruction_for", "load_enhancer", "official_postprocess", "parse_answer", "read_enhancer",
]
