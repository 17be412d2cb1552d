"""Qwen-Image-Edit prompts: the instruction and its reference images, read by Qwen2.5-VL together.

What the official pipelines do (diffusers QwenImageEditPipeline / QwenImageEditPlusPipeline,
`_get_qwen_prompt_embeds`), and what this mirrors step by step:
1. The prompt goes into the Edit chat template. Qwen-Image-Edit's template holds one image placeholder,
   `<|vision_start|><|image_pad|><|vision_end|>`, before the prompt; the Plus template (Edit-2509 and
   Edit-2511, one to three images) has none, and each image is put before the prompt as
   "Picture N: " + the placeholder, N from 1.
2. The processor expands every `<|image_pad|>` into as many copies as the image has merged tokens
   (grid_t * grid_h * grid_w / merge^2); here the single placeholder token id is repeated, which gives the
   same ids (special tokens are split off before the text around them is tokenized).
3. The vision tower's features replace the input embeddings at those positions, image after image.
4. Positions are Qwen2.5-VL's multimodal RoPE (transformers' `get_rope_index`): text tokens advance all
   three axes (time, height, width) together; an image's tokens get (start, start + row, start + column)
   over its merged grid, start being the position after the text before it, and the text after the image
   continues from start + max(rows, columns).
5. The last hidden state (after the final norm) is taken and its first 64 tokens (the system block and
   "<|im_start|>user\\n" of the template: `prompt_template_encode_start_idx`) are dropped.

The vision path's resize is the pipelines' (calculate_dimensions at EDIT_AREA for Edit, EDIT_PLUS_AREA for
Plus, then the processor's smart_resize), done by `qwen_image_processor.preprocess`. The VAE path of the
reference images is not here.

Exactness: the same arithmetic as transformers' model fed by diffusers' pipeline (the tests compare at a
tiny configuration, fp32, bound 1e-5, measured bit-identical where the preprocessing gives the processor's
pixels; where PIL's resize differs by a level at some pixels, see qwen_image_processor), with one deliberate
difference from this environment's diffusers +
transformers 5: diffusers calls the text encoder without `mm_token_type_ids`, and transformers 5 then gives
image tokens plain text positions; the official behaviour (transformers 4, which Qwen-Image-Edit was
released with, derives the types from the image token id) is the 3-D one computed here.

Prompt length: diffusers cuts nothing on the edit path. The limit kept is Qwen-Image's 1024 tokens, counted
over the text after the drop (the image tokens, which the official pipeline's size policy fixes, are not
counted); a longer prompt is refused rather than cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..text_encoders import qwen25vl_vision as vision
from ..text_encoders import qwen_image_processor as image_processor
from .family import MAX_PROMPT_TOKENS

VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END

_EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n"
)
# QwenImageEditPipeline.prompt_template_encode: the one image's placeholder is part of the template.
EDIT_TEMPLATE = _EDIT_SYSTEM + IMAGE_PLACEHOLDER + "{}<|im_end|>\n<|im_start|>assistant\n"
# QwenImageEditPlusPipeline.prompt_template_encode: the labelled images go before the prompt, inside {}.
EDIT_PLUS_TEMPLATE = _EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"
# QwenImageEditPlusPipeline._get_qwen_prompt_embeds' img_prompt_template.
EDIT_PLUS_IMAGE_LABEL = "Picture {}: " + IMAGE_PLACEHOLDER
TEMPLATE_DROP = 64  # prompt_template_encode_start_idx of both pipelines: _EDIT_SYSTEM in Qwen's tokenizer


@dataclass(frozen=True)
class EditVariant:
    name: str
    template: str
    labelled: bool  # each image as "Picture N: <placeholder>" before the prompt (Plus), or the template's one
    max_images: int
    vision_area: int  # the pipeline's first resize for the vision path (calculate_dimensions' target area)


VARIANTS = {
    "edit": EditVariant("edit", EDIT_TEMPLATE, labelled=False, max_images=1, vision_area=image_processor.EDIT_AREA),
    "edit_plus": EditVariant("edit_plus", EDIT_PLUS_TEMPLATE, labelled=True, max_images=3,
                             vision_area=image_processor.EDIT_PLUS_AREA),
}


def edit_variant(variant: str) -> EditVariant:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown Qwen-Image-Edit variant {variant!r}; expected one of {sorted(VARIANTS)}") from None


def edit_prompt_text(prompt: str, image_count: int, variant: str) -> str:
    """The chat text the pipeline tokenizes (before the processor expands the image placeholders)."""
    spec = edit_variant(variant)
    check_image_count(image_count, spec)
    if spec.labelled:
        prompt = "".join(EDIT_PLUS_IMAGE_LABEL.format(i + 1) for i in range(image_count)) + prompt
    return spec.template.format(prompt)


def template_drop(tokenizer) -> int:
    """How many leading tokens the pipelines drop: the system block and the user header (_EDIT_SYSTEM),
    TEMPLATE_DROP = 64 with Qwen2.5's tokenizer (counted, so that a test tokenizer drops the same text)."""
    return len(tokenizer(_EDIT_SYSTEM)["input_ids"])


def check_image_count(image_count: int, spec: EditVariant) -> None:
    if image_count < 1:
        raise ValueError(f"Qwen-Image-Edit ({spec.name}) needs at least one reference image")
    if image_count > spec.max_images:
        raise ValueError(f"Qwen-Image-Edit ({spec.name}) takes at most {spec.max_images} reference image"
                         f"{'s' if spec.max_images > 1 else ''}, got {image_count}")


def expand_image_tokens(input_ids: list[int], image_token_id: int, tokens_per_image: list[int]) -> list[int]:
    """The processor's placeholder expansion: the k-th image token repeated tokens_per_image[k] times."""
    placeholders = sum(1 for i in input_ids if i == image_token_id)
    if placeholders != len(tokens_per_image):
        raise ValueError(f"the prompt has {placeholders} image placeholders for {len(tokens_per_image)} images")
    counts = iter(tokens_per_image)
    expanded: list[int] = []
    for token in input_ids:
        expanded.extend([token] * next(counts) if token == image_token_id else [token])
    return expanded


def multimodal_position_ids(input_ids: list[int], image_token_id: int, grid_thw: torch.Tensor,
                            spatial_merge_size: int = 2) -> torch.Tensor:
    """Qwen2.5-VL's 3-D RoPE positions for one sequence of expanded ids (transformers' get_rope_index for
    still images), [3, L] long: rows time, height, width."""
    grids = iter(grid_thw.tolist())
    pieces: list[torch.Tensor] = []
    position, index, length = 0, 0, len(input_ids)
    while index < length:
        end = index
        if input_ids[index] == image_token_id:
            t, h, w = next(grids)
            h, w = h // spatial_merge_size, w // spatial_merge_size
            end = index + t * h * w
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            # a still image's time index is 0 for its one frame (t = 1): start + 0
            pieces.append(torch.stack([tt, hh, ww]).reshape(3, -1) + position)
            position += max(h, w)
        else:
            while end < length and input_ids[end] != image_token_id:
                end += 1
            pieces.append(torch.arange(position, position + end - index).expand(3, -1))
            position += end - index
        index = end
    return torch.cat(pieces, dim=1)


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def encode_edit_prompt(text_model, vision_model, tokenizer, prompt: str, images: list[torch.Tensor],
                       variant: str, device=None, dtype: torch.dtype | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One edit prompt and its reference images -> (context [1, L, hidden], mask), as the official
    pipeline's encode_prompt gives them. The mask is None: one prompt has no padding (the pipeline also
    returns None when every token is real).

    text_model: qwen25vl.build_text_model's language model; vision_model: qwen25vl_vision.build_vision_model's
    tower; tokenizer: the Qwen2.5 tokenizer; images: [H, W, 3] in 0..1 (ComfyUI IMAGE rows), resized here as
    the pipeline resizes them for the vision path (calculate_dimensions at the variant's area, then the
    processor's smart_resize); variant: "edit" (Qwen-Image-Edit, one image) or "edit_plus" (Edit-2509 / 2511,
    one to three images). dtype: the activations' dtype (default: the text model's embedding dtype).
    ValueError for a wrong number of images, an image that is not RGB, or a prompt whose text is longer
    than Qwen-Image's 1024 tokens after the template.
    """
    return encode_edit_prompts(text_model, vision_model, tokenizer, [prompt], images, variant, device, dtype)[0]


def encode_edit_prompts(text_model, vision_model, tokenizer, prompts: list[str], images: list[torch.Tensor],
                        variant: str, device=None, dtype: torch.dtype | None = None
                        ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """encode_edit_prompt for several prompts with the same images (a positive and a negative prompt): the
    vision tower reads the images once."""
    spec = edit_variant(variant)
    images = list(images)
    check_image_count(len(images), spec)
    for prompt in prompts:
        check_prompt_length(tokenizer, prompt, len(images), variant)
    pixel_values, grid_thw = image_processor.preprocess(images, target_area=spec.vision_area)
    features = None
    out = []
    for prompt in prompts:
        context, mask, features = _encode_with_features(text_model, vision_model, tokenizer, prompt, pixel_values,
                                                        grid_thw, variant, device, dtype, features)
        out.append((context, mask))
    return out


def check_prompt_length(tokenizer, prompt: str, image_count: int, variant: str) -> int:
    """The prompt's text length in tokens after the template's drop (image tokens not counted); ValueError
    over Qwen-Image's limit."""
    text_ids = tokenizer(edit_prompt_text(prompt, image_count, variant))["input_ids"]
    length = len(text_ids) - image_count - template_drop(tokenizer)  # minus the image placeholders
    if length > MAX_PROMPT_TOKENS:
        raise ValueError(f"the edit prompt is {length} tokens long after the template; the limit is "
                         f"{MAX_PROMPT_TOKENS}. Shorten it (it begins: {prompt[:60]!r})")
    return length


def encode_preprocessed_edit_prompt(text_model, vision_model, tokenizer, prompt: str, pixel_values: torch.Tensor,
                                    grid_thw: torch.Tensor, variant: str, device=None,
                                    dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """encode_edit_prompt for images already preprocessed (qwen_image_processor.preprocess's, or the
    official processor's, pixel_values and grid_thw, one grid row per image in prompt order)."""
    context, mask, _ = _encode_with_features(text_model, vision_model, tokenizer, prompt, pixel_values, grid_thw,
                                             variant, device, dtype)
    return context, mask


def _encode_with_features(text_model, vision_model, tokenizer, prompt, pixel_values, grid_thw, variant, device,
                          dtype, features=None):
    """(context, mask, image features): the features are computed when not given (and returned for reuse)."""
    image_count = grid_thw.shape[0]
    check_image_count(image_count, edit_variant(variant))
    check_prompt_length(tokenizer, prompt, image_count, variant)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if image_token_id is None or image_token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"the tokenizer has no {IMAGE_PAD} token: it is not Qwen2.5-VL's")
    text_ids = tokenizer(edit_prompt_text(prompt, image_count, variant))["input_ids"]
    merge = vision_model.spatial_merge_size
    input_ids = expand_image_tokens(text_ids, image_token_id, vision.tokens_per_image(grid_thw, merge))
    positions = multimodal_position_ids(input_ids, image_token_id, grid_thw, merge)

    device = device or _model_device(text_model)
    ids = torch.tensor(input_ids, dtype=torch.long, device=device)[None]
    embeddings = text_model.embed_tokens(ids)
    if dtype is not None:
        embeddings = embeddings.to(dtype)
    if features is None:
        features = vision.encode_images(vision_model, pixel_values, grid_thw, dtype=embeddings.dtype)
    image_rows = (ids[0] == image_token_id).nonzero().squeeze(1)
    embeddings = embeddings.clone()
    embeddings[0, image_rows] = features.to(device=device, dtype=embeddings.dtype)

    mask = torch.ones_like(ids)
    hidden = text_model(inputs_embeds=embeddings, attention_mask=mask, position_ids=positions[:, None].to(device),
                        use_cache=False).last_hidden_state
    return hidden[:, template_drop(tokenizer):], None, features
