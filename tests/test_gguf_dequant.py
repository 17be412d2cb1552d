"""GGUF dequantization in torch against the gguf package's numpy reference: bit-identical for every type,
on random blocks (every bit pattern of the packed values, finite scales) and on real quantized data."""

import numpy as np
import pytest
import torch

from comfyui_mmdit.loaders import gguf_dequant
from comfyui_mmdit.loaders.gguf_dequant import FP16_SCALE_OFFSETS, NAMES, SUPPORTED_TYPES, block_layout, dequantize

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

QUANTIZED_TYPES = sorted(T(t) for t in FP16_SCALE_OFFSETS)


def _random_blocks(qtype, n_blocks, seed=0):
    rng = np.random.default_rng(seed)
    _, size = block_layout(int(qtype))
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # random bytes in a scale field could make NaN/inf, which never compare equal
    for offset in FP16_SCALE_OFFSETS[int(qtype)]:
        scales = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
        raw[:, offset:offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def _reference(raw, qtype, shape):
    return torch.from_numpy(gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(shape))


def test_every_listed_type_is_supported():
    listed = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
              "Q6_K", "IQ4_NL", "IQ4_XS"}
    assert {NAMES[t] for t in SUPPORTED_TYPES} == listed
    for t in SUPPORTED_TYPES:  # our block layouts agree with the gguf package's
        assert block_layout(t) == gguf.GGML_QUANT_SIZES[T(t)]


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES, ids=lambda t: t.name)
def test_random_blocks_are_bit_identical_to_gguf(qtype):
    values, _ = block_layout(int(qtype))
    shape = (6, 2 * max(values, 256))  # several blocks per row, rows of 512 values
    raw = _random_blocks(qtype, shape[0] * shape[1] // values)
    ours = dequantize(torch.from_numpy(raw), int(qtype), shape, torch.float32)
    reference = _reference(raw, qtype, shape)
    assert ours.shape == shape and torch.isfinite(reference).all()
    assert torch.equal(ours, reference)


# The types the gguf package can quantize (K types: our quantizers, tested below; IQ types: random blocks).
@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_quantized_data_is_bit_identical_and_close_to_the_source(qtype):
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    raw = gguf.quants.quantize(x, qtype)
    ours = dequantize(torch.from_numpy(np.ascontiguousarray(raw)), int(qtype), x.shape, torch.float32)
    assert torch.equal(ours, _reference(raw, qtype, x.shape))
    relative = (ours - torch.from_numpy(x)).norm() / np.linalg.norm(x)
    assert relative < 0.2  # 4-bit types land near 0.1, Q8_0 near 0.004


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(512,), (2, 3, 256), (3, 1, 4, 64)])
def test_output_dtype_and_shape(dtype, shape):
    values = int(np.prod(shape))
    raw = _random_blocks(T.Q4_K, values // 256, seed=2)
    ours = dequantize(torch.from_numpy(raw).reshape(-1), int(T.Q4_K), shape, dtype)
    assert ours.dtype == dtype and ours.shape == shape
    assert torch.equal(ours, _reference(raw, T.Q4_K, shape).to(dtype))


@pytest.mark.parametrize("qtype, np_dtype", [(T.F32, np.float32), (T.F16, np.float16)])
def test_float_types_are_reinterpreted(qtype, np_dtype):
    x = np.random.default_rng(3).standard_normal((5, 7)).astype(np_dtype)
    ours = dequantize(torch.from_numpy(x.view(np.uint8).copy()), int(qtype), x.shape, torch.float32)
    assert torch.equal(ours, torch.from_numpy(x.astype(np.float32)))


def test_bf16_is_reinterpreted():
    x = torch.randn(3, 9).to(torch.bfloat16)
    raw = x.view(torch.uint8)
    assert torch.equal(dequantize(raw, int(T.BF16), x.shape, torch.float32), x.float())


def test_wrong_byte_count_and_unknown_type_are_refused():
    raw = torch.zeros(34 * 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"Q8_0 tensor of shape \[4, 32\] needs 136 bytes, got 102"):
        dequantize(raw, int(T.Q8_0), (4, 32))
    with pytest.raises(ValueError, match="do not fill whole Q8_0 blocks of 32"):
        dequantize(raw, int(T.Q8_0), (3, 33))
    with pytest.raises(ValueError, match="GGUF type 16 is not supported"):
        dequantize(raw, int(T.IQ2_XXS), (3, 32))


def test_dequantizes_on_the_bytes_device_without_numpy():
    raw = torch.from_numpy(_random_blocks(T.Q6_K, 2)).to("meta")
    out = dequantize(raw, int(T.Q6_K), (2, 256), torch.float16)
    assert out.device.type == "meta" and out.shape == (2, 256)
    assert gguf_dequant.KERNELS.keys() == SUPPORTED_TYPES - {0, 1, 30}


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_k_quantizers_write_what_gguf_reads(name):
    """Our K-type quantizers (the gguf package has none) produce blocks the gguf package decodes as we
    do, with the accuracy their bit widths allow; zero and one-signed rows included."""
    from comfyui_mmdit.tools.kquants import QUANTIZERS

    x = (np.random.default_rng(4).standard_normal((6, 512)) * 0.05).astype(np.float32)
    x[2] = 0.0
    x[3] = np.abs(x[3])
    x[4] = -np.abs(x[4])
    raw = QUANTIZERS[name](x)
    assert raw.shape == (6, 512 // 256 * block_layout(int(T[name]))[1])
    ours = dequantize(torch.from_numpy(raw), int(T[name]), x.shape, torch.float32)
    assert torch.equal(ours, _reference(raw, T[name], x.shape))
    assert torch.all(ours[2] == 0)
    relative = ((ours - torch.from_numpy(x)).norm() / np.linalg.norm(x)).item()
    assert relative < {"Q4_K": 0.09, "Q6_K": 0.025}[name], relative  # measured 0.078 and 0.019
    with pytest.raises(ValueError, match="multiple of 256"):
        QUANTIZERS[name](x[:, :128])
