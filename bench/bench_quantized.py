"""Quantized weights: forward time against the unquantized model, and peak memory while loading.

forward: a Qwen-Image transformer of 4 blocks at hidden 512 (1024 image tokens, 128 text tokens) written
    as bf16, then converted to each GGUF type and scaled FP8 with the pack's converter; median forward time
    of each (fp32 compute on the CPU, interleaved runs), as a ratio to the same model loaded from bf16.
load: a full-width Qwen-Image transformer (hidden 3072) of 3 blocks, converted to Q8_0, Q4_0 and scaled
    FP8 (the bf16 source itself as the reference). Each file is loaded in a fresh process; reported: the
    file size, peak resident memory after loading and after one small forward (every weight then touched),
    and their ratio to the file size. A loader that materialises full-precision weights shows ratios of
    2-4 for the quantized files; ours should stay near 1 plus one layer's dequantized weight.

    .venv/bin/python bench/bench_quantized.py [forward|load|all] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from common import current_rss_mb, import_pack, interleaved_times, peak_rss_mb, reset_peak_rss, run_child

import_pack()

from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model  # noqa: E402
from comfyui_mmdit.model_defs.ops import StandaloneOps  # noqa: E402
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageConfig, QwenImageTransformer  # noqa: E402
from comfyui_mmdit.nodes.host.standalone import StandaloneHost  # noqa: E402
from comfyui_mmdit.tools.convert import convert  # noqa: E402
from comfyui_mmdit.tools.tiny_models import random_state_dict, write_safetensors  # noqa: E402

FORWARD_CONFIG = QwenImageConfig(num_layers=4, attention_head_dim=128, num_attention_heads=4,
                                 joint_attention_dim=512, axes_dims_rope=(16, 56, 56))
FORWARD_TYPES = ("Q8_0", "Q6_K", "Q5_0", "Q4_K", "Q4_0", "fp8_scaled")
LOAD_CONFIG = QwenImageConfig(num_layers=3)  # the real widths: 24 heads x 128, text 3584
LOAD_TYPES = ("Q8_0", "Q4_0", "fp8_scaled")


def write_source(config: QwenImageConfig, path: Path) -> Path:
    network = QwenImageTransformer(config, StandaloneOps, device="meta")
    return write_safetensors(random_state_dict(network, seed=0, scale=0.02), path, dtype=torch.bfloat16)


def quantized_files(source: Path, types) -> dict[str, Path]:
    files = {"bf16": source}
    for qtype in types:
        suffix = ".safetensors" if qtype == "fp8_scaled" else ".gguf"
        files[qtype] = convert(source, source.with_name(f"{source.stem}-{qtype}{suffix}"), qtype)
    return files


def load(path: Path):
    host = StandaloneHost(models_dir=path.parent, device="cpu")
    return host.load_diffusion_model(read_diffusion_model(path))


def inputs(config: QwenImageConfig, latent_hw: tuple[int, int], text_tokens: int):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 16, *latent_hw, generator=g), torch.tensor([0.6]),
            torch.randn(1, text_tokens, config.joint_attention_dim, generator=g))


# --- forward time ---------------------------------------------------------------------------------------
def bench_forward(folder: Path) -> None:
    files = quantized_files(write_source(FORWARD_CONFIG, folder / "forward_bf16.safetensors"), FORWARD_TYPES)
    args = inputs(FORWARD_CONFIG, (64, 64), 128)
    reference = None
    runs, errors = {}, {}
    for name, path in files.items():
        network = load(path).network

        @torch.no_grad()
        def forward(network=network):
            return network(*args)

        out = forward()
        reference = out if reference is None else reference
        errors[name] = ((out - reference).norm() / reference.norm()).item()
        runs[name] = forward
    times = interleaved_times(runs, repeats=5)
    print(f"forward: {FORWARD_CONFIG.num_layers} blocks, hidden {FORWARD_CONFIG.num_attention_heads * 128}, "
          f"1024 image + 128 text tokens, fp32 compute, CPU, {torch.get_num_threads()} threads")
    print(f"{'weights':12} {'ms':>8} {'vs bf16':>8} {'rel. error':>11}")
    for name, seconds in times.items():
        print(f"{name:12} {seconds * 1000:8.1f} {seconds / times['bf16']:8.2f} {errors[name]:11.5f}")


# --- peak memory while loading --------------------------------------------------------------------------
def measure_load(path: Path) -> dict:
    """Child process: peak RSS above the start while loading `path`, then after one small forward."""
    torch.set_num_threads(2)
    baseline = current_rss_mb()
    reset_peak_rss()
    model = load(path)
    loaded = peak_rss_mb() - baseline
    with torch.no_grad():
        model.network(*inputs(LOAD_CONFIG, (8, 8), 8))
    return {"loaded_mb": loaded, "forward_mb": peak_rss_mb() - baseline}


def bench_load(folder: Path) -> None:
    source = folder / "load_bf16.safetensors"
    if not source.exists():
        write_source(LOAD_CONFIG, source)
    files = quantized_files(source, LOAD_TYPES)
    print(f"load: Qwen-Image transformer at full width, {LOAD_CONFIG.num_layers} blocks; fresh process per file")
    print(f"{'weights':12} {'file MB':>9} {'peak RSS loaded':>16} {'ratio':>6} {'peak RSS +forward':>18} {'ratio':>6}")
    for name, path in files.items():
        result = run_child(__file__, "--measure-load", path, env={"MALLOC_TRIM_THRESHOLD_": "0"})
        size = path.stat().st_size / 2**20
        print(f"{name:12} {size:9.0f} {result['loaded_mb']:13.0f} MB {result['loaded_mb'] / size:6.2f} "
              f"{result['forward_mb']:15.0f} MB {result['forward_mb'] / size:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("forward", "load", "all"), default="all")
    parser.add_argument("--keep", type=Path, help="folder for the generated files (kept; default: a temp dir)")
    parser.add_argument("--measure-load", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_load:
        print(json.dumps(measure_load(args.measure_load)))
        return
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        if args.what in ("forward", "all"):
            bench_forward(folder)
        if args.what in ("load", "all"):
            bench_load(folder)


if __name__ == "__main__":
    main()
