"""GGUF dequantization throughput per type: our torch kernels vs the gguf package's numpy reference.

Dequantizes a 4096 x 3072 weight (12.6 M values, one large transformer projection) of each type into
float16 on the CPU and reports output GB/s of each and the speed-up (numpy time / ours). Both outputs are
checked bit-identical first, so the figures compare the same work.

    .venv/bin/python bench/bench_gguf_dequant.py [--threads N]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import import_pack, interleaved_times

import_pack()

from comfyui_mmdit.loaders.gguf_dequant import (  # noqa: E402
    FP16_SCALE_OFFSETS, NAMES, SUPPORTED_TYPES, block_layout, dequantize,
)

SHAPE = (4096, 3072)


def random_blocks(qtype: int, rng) -> np.ndarray:
    """Real quantized data where the gguf package can quantize the type, else random packed bits with
    finite scales (the kernels' cost does not depend on the values)."""
    import gguf

    x = rng.standard_normal(SHAPE).astype(np.float32)
    try:
        return np.ascontiguousarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType(qtype))).view(np.uint8)
    except NotImplementedError:
        values, size = block_layout(qtype)
        raw = rng.integers(0, 256, size=(x.size // values, size), dtype=np.uint8)
        for offset in FP16_SCALE_OFFSETS[qtype]:
            scales = (rng.standard_normal(raw.shape[0]) * 0.01).astype(np.float16)
            raw[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
        return raw


def main() -> None:
    import gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    out_gb = np.prod(SHAPE) * 2 / 1e9  # float16 output
    print(f"{'type':8} {'ours GB/s':>10} {'numpy GB/s':>11} {'speed-up':>9}   ({SHAPE[0]}x{SHAPE[1]} -> fp16, "
          f"{args.threads} threads)")
    for qtype in sorted(SUPPORTED_TYPES, key=lambda t: NAMES[t]):
        raw = random_blocks(qtype, rng)
        data = torch.from_numpy(raw.reshape(-1))
        kind = gguf.GGMLQuantizationType(qtype)
        ours = dequantize(data, qtype, SHAPE, torch.float16)
        reference = gguf.quants.dequantize(raw, kind).reshape(SHAPE).astype(np.float16)
        if not torch.equal(ours, torch.from_numpy(reference)):
            raise SystemExit(f"{NAMES[qtype]}: output differs from the gguf package")
        times = interleaved_times({
            "ours": lambda: dequantize(data, qtype, SHAPE, torch.float16),
            "numpy": lambda: gguf.quants.dequantize(raw, kind).astype(np.float16),
        }, repeats=3)
        print(f"{NAMES[qtype]:8} {out_gb / times['ours']:10.2f} {out_gb / times['numpy']:11.2f} "
              f"{times['numpy'] / times['ours']:8.1f}x")


if __name__ == "__main__":
    main()
