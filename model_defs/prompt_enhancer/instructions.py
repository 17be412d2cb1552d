"""What the enhancer asks the language model to do, per target family, and the chat messages it sends.

Facts used (read from the official code; nothing here is guessed):

* HunyuanImage 2.1 (github Tencent-Hunyuan/HunyuanImage-2.1, hyimage/models/reprompt/reprompt.py, the
  reprompt model `tencent/HunyuanImage-2.1` reprompt/, which the PromptEnhancer project publishes as
  PromptEnhancer-7B; github Hunyuan-PromptEnhancer/PromptEnhancer, inference/prompt_enhancer.py uses the
  same instruction): the messages are [system: SYSTEM_PROMPT, user: the prompt], rendered with the
  tokenizer's chat template (`add_generation_prompt=True`, `enable_thinking=False`). The instruction is
  Chinese; HUNYUAN_IMAGE_21 below is its text, character for character. The rewritten prompt then goes
  through `replace_single_quotes` (text in single quotes gets double quotes, curly single quotes become
  curly double quotes), which `official_postprocess` implements.
* PromptEnhancer-32B (hyimage/models/reprompt/reprompt_32b.py, a Qwen2.5-VL-32B model): no system
  message; the user message is the instruction "请根据用户的输入，生成思考过程的思维链并改写提示词：", a newline,
  then the prompt; greedy decoding; the answer is what follows the closing think tag. It is a
  vision-language model (Qwen2_5_VLForConditionalGeneration), not a causal LM transformers' AutoModelForCausalLM
  builds, so the enhancer does not load it; parsing.py still reads its answer form.

Qwen-Image and FLUX.2 publish no local rewriting instruction: QWEN_IMAGE and FLUX2 below are this pack's
own, written for what those models read well (long, concrete, literal descriptions; text to draw kept
verbatim in quotes). They are marked `official=False` and say so in the node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Instruction:
    """A rewriting instruction and how it is sent.

    The instruction is sent as the system message and the prompt as the user message (as the official
    HunyuanImage 2.1 code does). official: the target's own published instruction (True) or this pack's (False).
    source: where the text comes from, for the node's description and logs.
    postprocess: apply the official quote normalisation to the rewritten prompt.
    """

    target: str
    text: str
    official: bool = False
    source: str = "this pack's own instruction"
    postprocess: bool = False

    def messages(self, prompt: str) -> list[dict]:
        return [{"role": "system", "content": self.text}, {"role": "user", "content": prompt}]


# The official instruction of hyimage/models/reprompt/reprompt.py (SYSTEM_PROMPT), verbatim. The official
# file's English rendering: rewrite the prompt so that (1) subject, action, quantity, style, layout,
# relations, attributes and text keep the original intent; (2) it follows an overall-detail-overall
# structure; (3) it is objective and neutral; (4) most important elements first, then secondary and
# background ones; (5) it follows a clear spatial or main-to-secondary logic; (6) it ends with one sentence
# naming the image's overall style or type.
HUNYUAN_IMAGE_21 = Instruction(
    target="HunyuanImage 2.1",
    text=(
        "你是一位图像生成提示词撰写专家，请根据用户输入的提示词，改写生成新的提示词，改写后的提示词要求："
        "1 改写后提示词包含的主体/动作/数量/风格/布局/关系/属性/文字等 必须和改写前的意图一致； "
        "2 在宏观上遵循“总-分-总”的结构，确保信息的层次清晰；"
        "3 客观中立，避免主观臆断和情感评价；"
        "4 由主到次，始终先描述最重要的元素，再描述次要和背景元素；"
        "5 逻辑清晰，严格遵循空间逻辑或主次逻辑，使读者能在大脑中重建画面；"
        "6 结尾点题，必须用一句话总结图像的整体风格或类型。"
    ),
    official=True,
    source="official: HunyuanImage 2.1 reprompt (hyimage/models/reprompt/reprompt.py SYSTEM_PROMPT)",
    postprocess=True,
)

# This pack's own instruction for Qwen-Image (not published by Qwen).
QWEN_IMAGE = Instruction(
    target="Qwen-Image",
    text=(
        "You rewrite prompts for the Qwen-Image text-to-image model. Rewrite the user's prompt into one "
        "detailed, concrete description of the image, in the language of the user's prompt.\n"
        "Rules:\n"
        "1. Keep every subject, action, count, attribute, relation, style and layout the user asked for; "
        "add nothing that contradicts it.\n"
        "2. Describe the main subject first, then secondary elements, then the background and setting.\n"
        "3. Say where things are (left, right, foreground, background), their colours, materials, lighting "
        "and the camera view or composition.\n"
        "4. Text that should appear in the image stays exactly as given, in double quotes, with where it "
        "is written and how it looks (font, colour, size).\n"
        "5. Be objective and visual: no opinions, no instructions to the model, no mention of prompts.\n"
        "6. End with one sentence naming the overall style or medium (photograph, oil painting, poster, "
        "3D render, ...).\n"
        "Answer with the rewritten prompt only, as one paragraph, without any preface."
    ),
)

# This pack's own instruction for FLUX.2 (not published by Black Forest Labs).
FLUX2 = Instruction(
    target="FLUX.2",
    text=(
        "You rewrite prompts for the FLUX.2 text-to-image model, which follows long natural-language "
        "descriptions closely. Rewrite the user's prompt into one flowing description of the image, in "
        "English unless the user asks for text in another language.\n"
        "Rules:\n"
        "1. Keep everything the user asked for (subjects, counts, actions, attributes, style, layout); "
        "invent nothing that changes it.\n"
        "2. Start with the main subject and what it does, then the setting and background, then "
        "lighting, colour palette and mood, then the camera: shot type, angle, lens, depth of field.\n"
        "3. Keep colour codes such as #FF5733 and any text to render exactly as given; put text to render "
        "in double quotes and say where it appears.\n"
        "4. Use plain visual language; no lists, no keywords separated by commas, no weights or tags.\n"
        "5. End by naming the medium or style (photograph, illustration, watercolour, ...).\n"
        "Answer with the rewritten prompt only, without any preface."
    ),
)

INSTRUCTIONS: dict[str, Instruction] = {
    i.target: i for i in (HUNYUAN_IMAGE_21, QWEN_IMAGE, FLUX2)
}
TARGETS: tuple[str, ...] = tuple(INSTRUCTIONS)


def instruction_for(target: str) -> Instruction:
    try:
        return INSTRUCTIONS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}") from None


_SINGLE_QUOTED = re.compile(r"\B'([^']*)'\B")


def official_postprocess(text: str) -> str:
    """The official `replace_single_quotes`: 'word' (quotes not inside a word) becomes "word", and curly
    single quotes become curly double quotes (‘ -> “, ’ -> ”), so that HunyuanImage's glyph encoder sees
    the quoted text."""
    text = _SINGLE_QUOTED.sub(r'"\1"', text)
    return text.replace("’", "”").replace("‘", "“")
