"""llama.cpp's `mmproj` GGUF of Qwen2.5-VL's vision tower -> the tower's own names (qwen25vl_vision).

llama.cpp keeps a vision-language model's image side in a separate GGUF ("mmproj", read by its mtmd /
clip code), beside the language-model GGUF. Qwen-Image-Edit reads reference images through Qwen2.5-VL's
vision tower, so a user with a GGUF text encoder has one of these beside it. The facts used here, from
llama.cpp (convert_hf_to_gguf.py: MmprojModel, Qwen2VLVisionModel, ModelBase.prepare_tensors; gguf-py
constants.py / tensor_mapping.py, checked against gguf 0.19.0; tools/mtmd/clip-impl.h, clip.cpp,
models/qwen2vl.cpp):

File
* general.architecture "clip" (MODEL_ARCH.MMPROJ's name), general.type "mmproj";
  clip.projector_type "qwen2.5vl_merger" (VisionProjectorType.QWEN25VL; "qwen2vl_merger" is Qwen2-VL,
  whose tower differs: LayerNorm with bias, fc1/fc2 MLP; "qwen2.5o" is Qwen2.5-Omni). A file with several
  encoders names the vision one in clip.vision.projector_type instead.
* clip.has_vision_encoder, clip.use_silu (true), clip.vision.{image_size (560), patch_size,
  embedding_length (1280), feed_forward_length (3420), block_count (32), projection_dim (the language
  model's width, = the merger's output, 3584 for 7B), attention.head_count (16),
  attention.layer_norm_epsilon (rms_norm_eps, 1e-6), image_mean, image_std (the processor's, OpenAI CLIP's),
  n_wa_pattern} where n_wa_pattern = fullatt_block_indexes[0] + 1 = 8: block i attends fully when
  (i + 1) % n_wa_pattern == 0, as our tower's every-eighth rule. Other writers (Ollama's converter) add
  clip.vision.fullatt_block_indexes and clip.vision.window_size; when present they are checked too.

Tensors (GGUF stores dims fastest-first; the reader gives torch order), HF `visual.` name -> GGUF name:
* patch_embed.proj.weight [1280, 3, 2, 14, 14] (a Conv3d over 2 frames) -> split along the temporal axis
  into two 2-D convs: v.patch_embd.weight = W[:, :, 0] and v.patch_embd.weight.1 = W[:, :, 1], each
  [1280, 3, 14, 14] (clip.cpp adds the two convs over the same still image, which equals the Conv3d over
  a frame repeated twice). Joined back here by stacking on dim 2: exact.
* blocks.N.attn.qkv.{weight,bias} [3*1280(, 1280)] -> split in q|k|v row order into v.blk.N.attn_q,
  attn_k, attn_v ([1280, 1280] / [1280]): no permutation (llama.cpp permutes q/k only for llama-type
  language models). Joined back by stacking rows q|k|v (base.fuse): exact, quantized bytes concatenated.
* blocks.N.attn.proj -> v.blk.N.attn_out; blocks.N.norm1 / norm2 (RMSNorm, weight only) -> v.blk.N.ln1 /
  ln2; blocks.N.mlp.gate_proj / up_proj / down_proj -> v.blk.N.ffn_gate / ffn_up / ffn_down.
* merger.ln_q (RMSNorm) -> v.post_ln; merger.mlp.0 / merger.mlp.2 -> mm.0 / mm.2 (index kept: V_MMPROJ
  "mm.{bid}"; clip.cpp reads mm.0 and mm.2). Nothing is transposed or reshaped besides the patch split.
* The old examples/llava/qwen2_vl_surgery.py also wrote a dummy v.position_embd.weight (zeros [10, 10]);
  it is not part of the network and is skipped.

Stored types (ModelBase.prepare_tensors + MmprojModel.tensor_force_quant): every 1-D tensor (biases,
norm weights) F32; both patch-embedding halves F16 in an f16 file and F32 otherwise (never quantized);
every other matrix in the output type (F32, F16, BF16 or Q8_0), and in a Q8_0 file a matrix whose rows
are not whole 32-value blocks falls back to F16 (the 7B tower's ffn_down, rows of 3420). Published files:
mmproj-*-f16.gguf / -F16 / -BF16 / -F32 and -Q8_0. All of these load as stored (Q8_0 stays quantized,
dequantized per layer); q/k/v of different stored types are joined in float32 (exact).
"""

from __future__ import annotations

import math

import torch

from ..errors import ModelFileError, brief
from ..formats.checkpoint import Checkpoint
from ..quant.tensor import is_quantized
from .base import Layout, LayoutProblem, LayoutStateDict, Take, fuse, plan_shapes, rename

ARCHITECTURE = "clip"  # general.architecture of every llama.cpp mmproj file
PROJECTOR_KEYS = ("clip.projector_type", "clip.vision.projector_type")
QWEN25VL_PROJECTOR = "qwen2.5vl_merger"
PROJECTOR_NAMES = {  # for messages about other projectors (clip-impl.h PROJECTOR_TYPE_NAMES)
    "qwen2vl_merger": "Qwen2-VL", "qwen3vl_merger": "Qwen3-VL", "qwen2.5o": "Qwen2.5-Omni",
    "gemma3": "Gemma 3", "pixtral": "Pixtral / Mistral", "llama4": "Llama 4", "mlp": "LLaVA",
}

PATCH_EMBEDDING = "v.patch_embd.weight"  # the first temporal slice; the second has ".1" appended
PATCH_EMBEDDING_1 = PATCH_EMBEDDING + ".1"
SKIPPED = ("v.position_embd.weight",)  # the surgery script's placeholder

BLOCK = "v.blk.{i}."
OURS = "blocks.{i}."

LLAMA_CPP_VISION = Layout("llama_cpp_mmproj", (
    *fuse(OURS + "attn.qkv.{p}", BLOCK + "attn_q.{p}", BLOCK + "attn_k.{p}", BLOCK + "attn_v.{p}"),
    *rename(BLOCK + "attn_out.{p}", OURS + "attn.proj.{p}"),
    *rename(BLOCK + "ln1.{p}", OURS + "norm1.{p}"),
    *rename(BLOCK + "ln2.{p}", OURS + "norm2.{p}"),
    *rename(BLOCK + "ffn_gate.{p}", OURS + "mlp.gate_proj.{p}"),
    *rename(BLOCK + "ffn_up.{p}", OURS + "mlp.up_proj.{p}"),
    *rename(BLOCK + "ffn_down.{p}", OURS + "mlp.down_proj.{p}"),
    *rename("v.post_ln.{p}", "merger.ln_q.{p}"),
    *rename("mm.{n}.{p}", "merger.mlp.{n}.{p}"),
), "llama.cpp mmproj names")

# Metadata our tower's structure fixes (qwen25vl_vision: 80-dim heads, a 112-pixel window, every eighth
# block attending fully, RMSNorm eps 1e-6, CLIP normalisation in the processor).
N_WA_PATTERN_KEY = "clip.vision.n_wa_pattern"
FULL_ATTENTION_KEY = "clip.vision.fullatt_block_indexes"
WINDOW_SIZE_KEY = "clip.vision.window_size"
HEAD_COUNT_KEY = "clip.vision.attention.head_count"
EPS_KEY = "clip.vision.attention.layer_norm_epsilon"
MEAN_KEY, STD_KEY = "clip.vision.image_mean", "clip.vision.image_std"
PROJECTION_DIM_KEY = "clip.vision.projection_dim"
RMS_NORM_EPS = 1e-6


def is_mmproj(checkpoint: Checkpoint) -> bool:
    """Whether the file is a llama.cpp mmproj GGUF (any model's)."""
    return checkpoint.format == "gguf" and getattr(checkpoint, "architecture", None) == ARCHITECTURE


def projector_type(checkpoint: Checkpoint) -> str | None:
    """The file's clip.projector_type (or, in a file with several encoders, clip.vision.projector_type)."""
    values = [checkpoint.metadata.get(key) for key in PROJECTOR_KEYS]
    if QWEN25VL_PROJECTOR in values:
        return QWEN25VL_PROJECTOR
    return next((v for v in values if isinstance(v, str)), None)


def describe_projector(kind) -> str:
    """'a Gemma 3 vision projector (gemma3)' for a message."""
    if kind is None:
        return "an mmproj file without a clip.projector_type"
    name = PROJECTOR_NAMES.get(kind)
    return f"a {name} projector ({brief(kind)})" if name else f"a {brief(kind)} projector"


@torch.no_grad()
def _stack_frames(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The Conv3d weight [O, C, 2, p, p] from its two temporal slices [O, C, p, p]. The converter stores
    them F16/F32; a quantized slice (not written by llama.cpp) is dequantized to float32 first."""
    parts = [t.dequantize(torch.float32) if is_quantized(t) else t for t in (first, second)]
    if parts[0].dtype != parts[1].dtype:
        dtype = torch.promote_types(parts[0].dtype, parts[1].dtype)
        parts = [p.to(dtype) for p in parts]
    return torch.stack(parts, dim=2)


class TemporalSlices:
    """A Source (see base.py) for the patch embedding: the two 2-D slices stacked on a new dim 2 (a copy,
    the size of one small conv)."""

    def __init__(self, first: str, second: str):
        self.first, self.second = first, second

    def keys(self) -> tuple[str, ...]:
        return (self.first, self.second)

    def shape(self, shapes) -> tuple[int, ...]:
        a, b = tuple(shapes[self.first]), tuple(shapes[self.second])
        if a != b or len(a) != 4:
            raise LayoutProblem(f"the patch embedding's temporal slices {self.first} {list(a)} and "
                                f"{self.second} {list(b)} are not two [out, in, p, p] convolutions of one shape")
        return (a[0], a[1], 2, a[2], a[3])

    def read(self, tensor) -> torch.Tensor:
        return _stack_frames(tensor(self.first), tensor(self.second))


def check_projector(checkpoint: Checkpoint) -> None:
    """A ModelFileError unless the mmproj file holds Qwen2.5-VL's vision tower."""
    kind = projector_type(checkpoint)
    if kind != QWEN25VL_PROJECTOR:
        raise ModelFileError(
            checkpoint.path, f"is {describe_projector(kind)}, not Qwen2.5-VL's vision tower",
            found=f"clip.projector_type {brief(kind)}", expected=f"clip.projector_type {QWEN25VL_PROJECTOR!r}",
            hint="Qwen-Image-Edit reads images with Qwen2.5-VL's vision tower: use the mmproj file published "
                 "with the Qwen2.5-VL-7B-Instruct GGUF (e.g. mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf).")


def vision_tower_weights(checkpoint: Checkpoint, description: str = "Qwen2.5-VL vision tower") -> LayoutStateDict:
    """The tower's state dict over a Qwen2.5-VL mmproj file: names and shapes in `.shapes` (nothing read),
    each tensor made on access (q/k/v joined, the patch embedding's slices stacked)."""
    check_projector(checkpoint)
    shapes = {key: tuple(checkpoint.shape(key)) for key in checkpoint.keys() if key not in SKIPPED}
    plan = LLAMA_CPP_VISION.plan(shapes, checkpoint.path)
    slices = [key for key in (PATCH_EMBEDDING, PATCH_EMBEDDING_1) if key in plan]
    if len(slices) == 1:
        missing = PATCH_EMBEDDING_1 if slices == [PATCH_EMBEDDING] else PATCH_EMBEDDING
        raise ModelFileError(checkpoint.path, "stores only one of the patch embedding's two temporal slices",
                             found=f"{slices[0]} without {missing}", hint="The file is incomplete or damaged; "
                             "re-download it.")
    if slices:
        del plan[PATCH_EMBEDDING], plan[PATCH_EMBEDDING_1]
        plan["patch_embed.proj.weight"] = TemporalSlices(PATCH_EMBEDDING, PATCH_EMBEDDING_1)
    network_shapes = plan_shapes(plan, shapes, checkpoint.path, description)
    return LayoutStateDict(plan, network_shapes, checkpoint.tensor)


def check_metadata(checkpoint: Checkpoint, config) -> None:
    """The file's stated structure against the tower read from its shapes (a QwenVisionConfig): what no
    tensor shows (attention pattern, window, head count, norm epsilon, image normalisation) must be what
    our tower computes. Keys a writer left out are not required (clip.cpp requires only n_wa_pattern)."""
    from ...model_defs.text_encoders.qwen_image_processor import CLIP_MEAN, CLIP_STD

    meta = checkpoint.metadata
    problems = []
    pattern = meta.get(N_WA_PATTERN_KEY)
    full = list(config.fullatt_block_indexes)
    if pattern is not None and (not isinstance(pattern, int) or pattern <= 0
                                or [i for i in range(config.depth) if (i + 1) % pattern == 0] != full):
        problems.append(f"{N_WA_PATTERN_KEY} {brief(pattern)} (full attention every {brief(pattern)} blocks, "
                        f"Qwen2.5-VL's is every 8th: blocks {full})")
    indexes = meta.get(FULL_ATTENTION_KEY)
    if indexes is not None and not (isinstance(indexes, list) and indexes == full):
        problems.append(f"{FULL_ATTENTION_KEY} {brief(indexes)} (Qwen2.5-VL's: {full})")
    window = meta.get(WINDOW_SIZE_KEY)
    if window is not None and window != config.window_size:
        problems.append(f"{WINDOW_SIZE_KEY} {brief(window)} (Qwen2.5-VL's: {config.window_size})")
    heads = meta.get(HEAD_COUNT_KEY)
    if heads is not None and heads != config.num_heads:
        problems.append(f"{HEAD_COUNT_KEY} {brief(heads)} (heads of {config.head_dim} in a "
                        f"{config.hidden_size}-wide tower: {config.num_heads})")
    eps = meta.get(EPS_KEY)
    if eps is not None and (not isinstance(eps, float) or not math.isclose(eps, RMS_NORM_EPS, rel_tol=1e-3)):
        problems.append(f"{EPS_KEY} {brief(eps)} (Qwen2.5-VL's: {RMS_NORM_EPS})")
    for key, expected in ((MEAN_KEY, CLIP_MEAN), (STD_KEY, CLIP_STD)):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3
                                      and all(isinstance(v, float) and math.isclose(v, e, abs_tol=1e-6)
                                              for v, e in zip(value, expected))):
            problems.append(f"{key} {brief(value)} (Qwen2.5-VL's processor: {list(expected)})")
    width = meta.get(PROJECTION_DIM_KEY)
    if width is not None and width != config.out_hidden_size:
        problems.append(f"{PROJECTION_DIM_KEY} {brief(width)} while mm.2 outputs {config.out_hidden_size}")
    if problems:
        more = f" ({len(problems)} in all)" if len(problems) > 3 else ""
        raise ModelFileError(checkpoint.path, "states a vision tower this pack's Qwen2.5-VL tower does not compute",
                             found="; ".join(problems[:3]) + more,
                             hint="The file is not Qwen2.5-VL's published vision tower (or its metadata is damaged).")
