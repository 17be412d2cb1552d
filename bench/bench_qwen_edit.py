"""Qwen-Image-Edit: DiT step time and peak memory as the number and size of reference images grow.

Every reference image's latent is appended to the noisy image's tokens (model_defs/qwen_image/edit.py), and
under Edit-2509/2511 each image also adds its vision tokens to the text, so one joint attention runs over
    L = output tokens + reference tokens + text tokens.
The linear layers cost about 24 D^2 FLOPs per token and layer, attention 4 L D per token and layer, so the
step grows between linearly and quadratically with L. This bench measures it, one forward of our
QwenImageTransformer (forward(..., ref_latents=[...])) per case, and reports each case as ratios against
one reference image of the output's size ("one"), measured in the same run, next to two models:
* FLOP model: the matrix products (projections, MLPs, attention, input and output layers) of the case
  over those of "one", at the bench's config (to compare with the measured time) and at the published
  config (60 blocks, hidden 3072) with the published token counts (what a full-size step would see);
* memory model: the sequence length over that of "one" (activations are [L, D]-sized; the attention
  kernels, CPU flash and CUDA SDPA/flash, keep no [L, L] scores).

Token counts are analytic, those of the official pipeline (Edit-2509/2511, QwenImageEditPlusPipeline):
the output is 1024 x 1024 px (64 x 64 tokens: 8x VAE, 2x2 patches); a reference of area a x the
output's and aspect w/h takes the official rescale (calculate_dimensions: sides multiples of 32 px);
the text is a prompt of about 45 tokens after the dropped template, plus per image a "Picture N:" label
(about 6 tokens) and its vision tokens (the 384 x 384 vision-path size at the image's aspect,
smart_resize to 28 px, one token per 28 x 28 px). With no reference the text is the prompt alone.

CPU (the default): the same pipeline at half the linear size (512 x 512 output, 1024 tokens; the
vision-path area and the prompt scaled by 1/4 too), so every token count is about 1/4 of the published
one and their proportions are the real ones; hidden 768 (6 heads x 128) keeps the published
attention-to-linear FLOP balance (L / 6D) too; 2 blocks, text width 896, random weights, fp32, 2 threads,
OMP_WAIT_POLICY=PASSIVE. Time: each case is timed back to back with "one" (in alternating order), and the
ratio is the median of those paired ratios over the repeats, so a slow phase of a shared machine hits both
sides of a ratio alike. The ratio ("time x") is of process CPU time, the two threads' work (passive OpenMP
threads do not spin), which other jobs on a shared machine hardly change while they stretch wall time;
the wall-time ratio ("wall x") is shown beside it, and on an idle machine the two agree. Memory: peak
resident memory above the level before one forward, in a fresh process per case (bench/common.run_child
with MEMORY_ENV).

CUDA (--device cuda): the published token counts, hidden 3072 (24 heads x 128), text width 3584, bf16,
fewer blocks (--layers, default 4; every block costs the same, so the ratios hold for 60), the attention
backend "auto" picks (flash-attn if installed, else SDPA); time: wall time between CUDA syncs, paired as
on the CPU; memory: torch.cuda.max_memory_allocated above the allocated level before one forward, in the
same process (the allocator's count of live tensors is exact, so no fresh process is needed). The CPU path
never touches CUDA.

Batch 1 (classifier-free guidance runs two such forwards, or one at batch 2: the same ratios). Cases
(name: references as area x aspect w/h): none (text-to-image), one (1x 1:1, the reference), two, three
(1x 1:1 each), quarter / half / double (0.25x, 0.5x, 2x 1:1), wide (1x 16:9), tall (1x 9:16),
mixed (1x 1:1, 0.5x 4:3, 2x 9:16), three_double (2x 1:1 each: three 2 MP inputs, as the native-size policy
can give), one_2511 (one, with Edit-2511's timestep-zero modulation of the reference tokens).
Prints a table and, last, one JSON line with every figure. Never asserts on time.

    .venv/bin/python bench/bench_qwen_edit.py [CASE ...] [--repeats N]   # CPU, 6-9 minutes on 2 cores
    .venv/bin/python bench/bench_qwen_edit.py --device cuda [--layers 4] [CASE ...]   # GPU, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, replace

import torch

from common import MEMORY_ENV, cuda_peak_extra_mb, import_pack, main_or_memory_child, paired_times, run_child

import_pack()

from comfyui_mmdit.model_defs.ops import StandaloneOps  # noqa: E402
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageConfig, QwenImageTransformer  # noqa: E402
from comfyui_mmdit.model_defs.text_encoders.qwen_image_processor import (  # noqa: E402
    EDIT_PLUS_AREA, calculate_dimensions, processor_size,
)
from comfyui_mmdit.tools.tiny_models import random_state_dict  # noqa: E402

# --- the cases ----------------------------------------------------------------------------------------------
# name: the references, each (area relative to the output's, aspect width / height), and whether the reference
# tokens are modulated at timestep zero (Edit-2511).
CASES = {
    "none": ((), False),
    "one": (((1.0, 1.0),), False),
    "two": (((1.0, 1.0),) * 2, False),
    "three": (((1.0, 1.0),) * 3, False),
    "quarter": (((0.25, 1.0),), False),
    "half": (((0.5, 1.0),), False),
    "double": (((2.0, 1.0),), False),
    "wide": (((1.0, 16 / 9),), False),
    "tall": (((1.0, 9 / 16),), False),
    "mixed": (((1.0, 1.0), (0.5, 4 / 3), (2.0, 9 / 16)), False),
    "three_double": (((2.0, 1.0),) * 3, False),
    "one_2511": (((1.0, 1.0),), True),
}
REFERENCE_CASE = "one"

# --- the published pipeline's sizes (scale 1) -----------------------------------------------------------------
OUTPUT_PX = 1024  # square output, about 1 MP (the official VAE-path area)
VAE_CELL_PX = 8  # pixels per latent cell
PATCH = 2  # latent cells per token side
VISION_TOKEN_PX = 28  # Qwen2.5-VL: 14 px patches merged 2x2
PROMPT_TOKENS = 45  # an instruction of about 40 tokens and the template's tail, after the dropped system block
LABEL_TOKENS = 6  # "Picture N: " and the vision start/end tokens, per image (Edit-2509/2511)

PUBLISHED = QwenImageConfig()  # 60 blocks, 24 heads x 128, text width 3584


@dataclass(frozen=True)
class Setting:
    device: str
    scale: float  # linear pixel scale of the whole pipeline against the published sizes
    config: QwenImageConfig
    dtype: torch.dtype


def cpu_setting(layers: int = 2) -> Setting:
    return Setting("cpu", 0.5, QwenImageConfig(num_layers=layers, attention_head_dim=128, num_attention_heads=6,
                                               joint_attention_dim=896), torch.float32)


def cuda_setting(layers: int = 4) -> Setting:
    return Setting("cuda", 1.0, replace(PUBLISHED, num_layers=layers), torch.bfloat16)


@dataclass(frozen=True)
class Tokens:
    """The analytic token counts of one case at one scale."""

    output_latent: tuple[int, int]  # latent cells (h, w)
    reference_latents: tuple[tuple[int, int], ...]
    text: int

    @property
    def output(self) -> int:
        return _tokens(self.output_latent)

    @property
    def references(self) -> int:
        return sum(_tokens(size) for size in self.reference_latents)

    @property
    def sequence(self) -> int:
        return self.output + self.references + self.text


def _tokens(latent: tuple[int, int]) -> int:
    return (latent[0] // PATCH) * (latent[1] // PATCH)


def case_tokens(case: str, scale: float) -> Tokens:
    references, _ = CASES[case]
    output_px = round(OUTPUT_PX * scale)
    latents, text = [], PROMPT_TOKENS * scale ** 2
    for area, aspect in references:
        width, height = calculate_dimensions(area * output_px ** 2, aspect)  # the official rescale
        latents.append((height // VAE_CELL_PX, width // VAE_CELL_PX))
        vision_h, vision_w = processor_size(height, width, target_area=round(EDIT_PLUS_AREA * scale ** 2))
        text += LABEL_TOKENS * scale ** 2 + (vision_h // VISION_TOKEN_PX) * (vision_w // VISION_TOKEN_PX)
    cells = output_px // VAE_CELL_PX
    return Tokens((cells, cells), tuple(latents), round(text))


def forward_flops(config: QwenImageConfig, tokens: Tokens) -> float:
    """FLOPs of the matrix products of one forward (batch 1): per block, q/k/v/out projections (4 D^2 per
    token) and the 4x GELU MLP (8 D^2) of both streams, 2 FLOPs a multiply-add, and joint attention
    (QK^T and AV, 4 L^2 D); plus img_in, txt_in and proj_out (output tokens only). Elementwise work (norms,
    RoPE, modulation), linear in L, and the per-sample modulation MLPs are left out."""
    d, length = config.inner_dim, tokens.sequence
    blocks = config.num_layers * (24 * d * d * length + 4 * length * length * d)
    image_tokens = tokens.output + tokens.references
    edges = 2 * d * (config.in_channels * image_tokens + config.joint_attention_dim * tokens.text
                     + config.patch_size ** 2 * config.out_channels * tokens.output)
    return blocks + edges


# --- the network and its inputs -------------------------------------------------------------------------------
def build_model(setting: Setting) -> QwenImageTransformer:
    config = setting.config
    if setting.device == "cpu":
        model = QwenImageTransformer(config, StandaloneOps, device="meta")
        model.load_state_dict(random_state_dict(model, seed=0), assign=True)
        return model.eval()
    # On the GPU: random weights drawn there (a CPU generator would take minutes at full width); matrices
    # ~ N(0, 1/fan_in) so activations stay finite in bf16, norm scales 1, biases 0.
    torch.manual_seed(0)
    model = QwenImageTransformer(config, StandaloneOps, dtype=setting.dtype, device=setting.device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model.eval()


def case_forward(model: QwenImageTransformer, setting: Setting, case: str):
    """The no-grad forward of one case (inputs drawn once, on the setting's device, in its dtype)."""
    _, timestep_zero = CASES[case]
    tokens = case_tokens(case, setting.scale)
    g = torch.Generator().manual_seed(1)
    kw = dict(dtype=setting.dtype, device=setting.device)

    def draw(*shape):
        return torch.randn(shape, generator=g).to(**kw)

    latent = draw(1, 16, *tokens.output_latent)
    references = [draw(1, 16, *size) for size in tokens.reference_latents]
    context = draw(1, tokens.text, setting.config.joint_attention_dim)
    sigma = torch.tensor([0.6], device=setting.device)
    method = "index_timestep_zero" if timestep_zero else None
    sync = torch.cuda.synchronize if setting.device == "cuda" else (lambda: None)

    @torch.no_grad()
    def forward():
        out = model(latent, sigma, context, ref_latents=references or None, ref_latents_method=method)
        sync()
        return out

    return forward


def build(which: str):
    """The memory child's callable: `CASE,LAYERS` on the CPU setting."""
    case, layers = which.split(",")
    setting = cpu_setting(int(layers))
    return case_forward(build_model(setting), setting, case)


# --- the report --------------------------------------------------------------------------------------------------
def describe(case: str) -> str:
    references, timestep_zero = CASES[case]
    if not references:
        return "-"
    text = " + ".join(f"{area:g}x {_aspect(aspect)}" for area, aspect in references)
    return text + (" (2511)" if timestep_zero else "")


def _aspect(aspect: float) -> str:
    for w, h in ((1, 1), (16, 9), (9, 16), (4, 3), (3, 4)):
        if math.isclose(aspect, w / h):
            return f"{w}:{h}"
    return f"{aspect:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to run (default all): {', '.join(CASES)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layers", type=int, help="transformer blocks (default 2 on the CPU, 4 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per case, each paired with one of the reference case (default 5)")
    args = parser.parse_args()
    unknown = [case for case in args.cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    cases = list(dict.fromkeys([REFERENCE_CASE, *(args.cases or CASES)]))

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here")
        setting = cuda_setting(args.layers or 4)
    else:
        torch.set_num_threads(2)
        setting = cpu_setting(args.layers or 2)

    model = build_model(setting)
    forwards = {case: case_forward(model, setting, case) for case in cases}
    load_before = os.getloadavg()[0]
    timing = paired_times(forwards, REFERENCE_CASE, repeats=args.repeats)
    load_after = os.getloadavg()[0]
    # On the CPU the ratios are of process CPU time (both threads' work; OMP_WAIT_POLICY=PASSIVE threads do
    # not spin), which a shared machine's other jobs hardly change; on CUDA the host's CPU time means
    # nothing, so wall time between syncs.
    time_clock = "cpu" if setting.device == "cpu" else "wall"
    times, time_ratios = timing[time_clock]
    wall_times, wall_ratios = timing["wall"]
    backend = model.attention_backend
    if setting.device == "cuda":
        memory = {case: cuda_peak_extra_mb(forwards[case]) for case in cases}
    else:
        del forwards, model  # the children measure memory; free this process's share of the machine
        memory = {case: run_child(__file__, "--memory", f"{case},{setting.config.num_layers}",
                                  env=MEMORY_ENV)["peak_extra_mb"] for case in cases}

    tokens = {case: case_tokens(case, setting.scale) for case in cases}
    published = {case: case_tokens(case, 1.0) for case in cases}
    flops = {case: forward_flops(setting.config, tokens[case]) for case in cases}
    flops_published = {case: forward_flops(PUBLISHED, published[case]) for case in cases}
    ref = REFERENCE_CASE
    rows = []
    for case in cases:
        t = tokens[case]
        rows.append(dict(
            case=case, references=describe(case), output_tokens=t.output, reference_tokens=t.references,
            text_tokens=t.text, sequence=t.sequence, published_sequence=published[case].sequence,
            time_ms=times[case] * 1000, time_ratio=time_ratios[case], wall_ms=wall_times[case] * 1000,
            wall_ratio=wall_ratios[case],
            flop_ratio=flops[case] / flops[ref], published_flop_ratio=flops_published[case] / flops_published[ref],
            peak_mb=memory[case], memory_ratio=memory[case] / memory[ref],
            sequence_ratio=t.sequence / tokens[ref].sequence,
        ))

    where = (f"CUDA {torch.cuda.get_device_name()}" if setting.device == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"config: {setting.config}")
    print(f"{where}, {str(setting.dtype).removeprefix('torch.')}, attention {backend}, pixel scale "
          f"{setting.scale:g} of the published sizes (output {round(OUTPUT_PX * setting.scale)} px square), "
          f"{args.repeats} runs per case, each paired with one of '{ref}' (ratios: medians of the paired "
          f"ratios); load average {load_before:.1f} before the timing, {load_after:.1f} after")
    memory_name = "peak MB" if setting.device == "cpu" else "VRAM MB"
    header = (f"{'case':13s} {'references':34s} {'out':>5s} {'refs':>6s} {'text':>5s} {'L':>6s} {'L pub':>6s} "
              f"{'wall ms':>9s} {'time x':>7s} {'wall x':>7s} {'FLOP x':>7s} {'pub x':>6s} {memory_name:>9s} "
              f"{'mem x':>6s} {'L x':>6s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:13s} {r['references']:34s} {r['output_tokens']:5d} {r['reference_tokens']:6d} "
              f"{r['text_tokens']:5d} {r['sequence']:6d} {r['published_sequence']:6d} {r['wall_ms']:9.1f} "
              f"{r['time_ratio']:7.2f} {r['wall_ratio']:7.2f} {r['flop_ratio']:7.2f} "
              f"{r['published_flop_ratio']:6.2f} "
              f"{r['peak_mb']:9.1f} {r['memory_ratio']:6.2f} {r['sequence_ratio']:6.2f}")
    print(f"out/refs/text: image tokens of the output and the references, text tokens; L: the joint sequence, "
          f"L pub: at the published sizes; wall ms: median wall time of one forward; time x: measured ratio "
          f"({time_clock} time), wall x: the wall-time ratio; FLOP x: the FLOP model at this config, pub x: at "
          f"the published config and sizes; mem x: measured peak memory ratio, L x: the sequence-length ratio "
          f"(memory model)")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(setting.config).items()}
    print(json.dumps(dict(bench="qwen_edit", device=where, dtype=str(setting.dtype), attention=backend,
                          scale=setting.scale, config=config, repeats=args.repeats, reference_case=ref,
                          time_clock=time_clock, load_average=[load_before, load_after],
                          rows=rows)))


if __name__ == "__main__":
    main_or_memory_child(main, build)
