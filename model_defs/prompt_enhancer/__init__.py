"""The prompt enhancer: rewrite a prompt with a local instruction-tuned language model before encoding it.

instructions.py  what the model is asked to do per target family (HunyuanImage 2.1's official instruction;
                 the pack's own for Qwen-Image and FLUX.2), and the facts they come from;
loading.py       model files -> transformers' causal LM (HF folder, single file, FP8, GGUF), never downloading;
generation.py    the seeded token loop, equal to transformers' `generate` token for token;
parsing.py       the reasoning and the rewritten prompt in the model's answer;
enhance.py       the three together: a prompt in, the rewritten prompt and the reasoning out.
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
