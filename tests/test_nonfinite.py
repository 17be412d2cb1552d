"""NaN and Inf never make a silent black image: damaged weights are named with their file, and an overflow
with finite weights names the step and what to change."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.finite import NonFiniteOutputError, check_finite, nonfinite_tensors
from comfyui_mmdit.loaders.quant.tensor import FP8_SCALED, QuantizedTensor
from comfyui_mmdit.model_defs.qwen_image import family
from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS as NODES
from comfyui_mmdit.nodes.host import set_host
from comfyui_mmdit.nodes.host.standalone import StandaloneHost

from helpers import write_tiny_model_set

QWEN = family.DISPLAY_NAME


def _damage(path, key, value):
    """Rewrite the safetensors file at `path` with the last element of tensor `key` set to `value` (the
    last temporal tap of a causal VAE convolution: the one a single image uses)."""
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[-1] = value
    save_file(tensors, str(path))


@pytest.fixture()
def models(tmp_path):
    write_tiny_model_set(tmp_path, "dit.safetensors", "te.safetensors", "vae.safetensors")
    set_host(StandaloneHost(models_dir=tmp_path, device="cpu"))
    yield tmp_path
    set_host(None)


def _conditioning():
    encoder, = NODES["MMDiTTextEncoderLoader"]().load("te.safetensors", QWEN)
    positive, = NODES["MMDiTTextEncode"]().encode(encoder, "a lighthouse")
    negative, = NODES["MMDiTTextEncode"]().encode(encoder, " ")
    return positive, negative


def _sample(steps=3):
    model, = NODES["MMDiTModelLoader"]().load("dit.safetensors")
    positive, negative = _conditioning()
    latent, = NODES["MMDiTEmptyLatent"]().generate(QWEN, "custom (width x height)", 48, 32, 1)
    return NODES["MMDiTSampler"]().sample(model, positive, negative, latent, 0, steps=steps, cfg=4.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_diffusion_model_weights_with_nan_or_inf_name_the_file_and_tensor(models, value):
    key = "transformer_blocks.1.img_mlp.net.2.weight"
    _damage(models / "diffusion_models" / "dit.safetensors", key, value)
    with pytest.raises(ModelFileError) as error:
        _sample()
    message = str(error.value)
    assert "dit.safetensors" in message and key in message and "at step 1 of 3" in message
    assert "download it again" in message


def test_overflow_with_finite_weights_names_the_step_and_remedy(models):
    # Finite but enormous output weights: the output overflows float32 to Inf in the first step.
    path = models / "diffusion_models" / "dit.safetensors"
    tensors = load_file(str(path))
    tensors = {k: v.float() for k, v in tensors.items()}
    tensors["proj_out.weight"] = torch.full_like(tensors["proj_out.weight"], 3e38)
    save_file(tensors, str(path))
    with pytest.raises(NonFiniteOutputError, match=r"at step 1 of 3 .*every weight of .*dit.safetensors is finite"
                                                   r".*overflowed.*bf16 or fp32"):
        _sample()


def test_vae_with_nan_is_named_when_decoding(models):
    _damage(models / "vae" / "vae.safetensors", "decoder.head.2.weight", float("nan"))
    vae, = NODES["MMDiTVAELoader"]().load("vae.safetensors")
    with pytest.raises(ModelFileError, match=r"vae.safetensors: holds NaN or Inf values, so the VAE produced them "
                                             r"while decoding.*decoder.head.2.weight"):
        NODES["MMDiTVAEDecode"]().decode({"samples": torch.randn(1, 16, 1, 4, 4)}, vae, tiling="off")


def test_text_encoder_with_nan_is_named_when_encoding(models):
    _damage(models / "text_encoders" / "te.safetensors", "model.layers.0.mlp.down_proj.weight", float("nan"))
    with pytest.raises(ModelFileError, match=r"te.safetensors: holds NaN .*text encoder.*layers.0.mlp.down_proj"):
        _conditioning()


def test_quantized_weights_are_looked_at_dequantized():
    layer = torch.nn.Linear(4, 3, bias=False)
    data = torch.ones(3, 4).to(torch.float8_e4m3fn)
    data.view(torch.uint8)[1, 2] = 0x7F  # e4m3fn's NaN
    layer.weight = torch.nn.Parameter(QuantizedTensor(data, FP8_SCALED, (3, 4), scale=torch.tensor(0.5)),
                                      requires_grad=False)
    assert nonfinite_tensors(layer) == ["weight"]
    good = torch.zeros(2)
    assert check_finite(good, layer, "x.safetensors", "layer") is good  # finite output: nothing scanned
