"""HunyuanImage 2.1 VAE at full size (random weights), fp32 CPU: peak memory of whole vs tiled decodes.

Each decode runs once in a fresh process (MEMORY_ENV, so resident memory follows live tensors) after a
small warm-up decode; reported is the peak resident memory above the loaded VAE (weights excluded), its
wall time, and the module's own estimate (`decode_memory`, which the decode node compares with free memory
to choose tiling). Tiled decodes use the node's defaults: 512-pixel tiles overlapping by 128 (16 / 4
latent cells). Ratios are taken against the whole 1024x1024 decode measured in the same run.

A whole 2048x2048 decode computes ~50 TFLOP (tens of minutes on two cores) and needs ~9 GB of activations,
so by default it is not run: its memory is extrapolated from the 1024x1024 one (activations scale with
the pixel count) and marked as such. `--whole-2048` measures it too.

    .venv/bin/python bench/bench_hunyuan_vae.py [--whole-2048]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from common import MEMORY_ENV, current_rss_mb, import_pack, peak_rss_mb, reset_peak_rss, run_child

import_pack()

from comfyui_mmdit.model_defs.hunyuan_image.vae import HunyuanImageVAE  # noqa: E402
from comfyui_mmdit.tools.tiny_models import randomise_vae_  # noqa: E402

CASES = {  # name: (latent side, tiled)
    "whole_1024": (32, False),
    "tiled_1024": (32, True),
    "tiled_2048": (64, True),
    "whole_2048": (64, False),
}


def measure(case: str) -> dict:
    """In the child: build the VAE, warm up, then one decode with the peak RSS above the loaded weights."""
    torch.set_num_threads(2)
    side, tiled = CASES[case]
    vae = HunyuanImageVAE().eval()
    randomise_vae_(vae, seed=0)
    decode = vae.decode_tiled if tiled else vae.decode
    vae.decode(torch.randn(1, 64, 2, 2))  # first-call allocations (kernels, thread pools) are not counted
    latent = torch.randn(1, 64, side, side, generator=torch.Generator().manual_seed(1))
    baseline = current_rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    images = decode(latent)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb() - baseline
    assert images.shape == (1, 3, side * 32, side * 32) and torch.isfinite(images).all()
    estimate = vae.decode_memory(latent.shape, torch.float32) / 2**20
    return {"peak_extra_mb": peak, "seconds": seconds, "estimate_mb": estimate}


def main() -> None:
    cases = ["whole_1024", "tiled_1024", "tiled_2048"] + (["whole_2048"] if "--whole-2048" in sys.argv else [])
    results = {}
    for case in cases:
        results[case] = run_child(__file__, "--measure", case, env=MEMORY_ENV)
        print(f"{case}: {json.dumps(results[case])}", flush=True)
    reference = results["whole_1024"]["peak_extra_mb"]
    if "whole_2048" not in results:
        results["whole_2048 (extrapolated x4)"] = {"peak_extra_mb": 4 * reference, "seconds": float("nan"),
                                                   "estimate_mb": 4 * results["whole_1024"]["estimate_mb"]}
    print("\nfull-size HunyuanImage 2.1 VAE (405.6M parameters, random weights), fp32 CPU, 2 threads; "
          "peak resident memory above the loaded weights")
    print(f"{'decode':30s} {'peak MB':>9s} {'x whole 1024':>13s} {'estimate MB':>12s} {'seconds':>8s}")
    for case, r in results.items():
        print(f"{case:30s} {r['peak_extra_mb']:9.0f} {r['peak_extra_mb'] / reference:13.2f} "
              f"{r['estimate_mb']:12.0f} {r['seconds']:8.0f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2])))
    else:
        main()
