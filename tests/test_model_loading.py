"""Diffusion-model files: every layout and prefix loads; damaged or foreign files give clear errors."""

from pathlib import Path

import pytest
import torch

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.model_defs.ops import StandaloneOps
from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageTransformer
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.tiny_models import TINY_QWEN_DIT, tiny_qwen_dit_state_dict, write_safetensors


@pytest.fixture(scope="module")
def state():
    return tiny_qwen_dit_state_dict(seed=5)


def _forward(network):
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 8, 12, generator=g)
    context = torch.randn(1, 6, TINY_QWEN_DIT.joint_attention_dim, generator=g)
    with torch.no_grad():
        return network(latent, torch.tensor([0.4]), context)


@pytest.fixture(scope="module")
def reference_output(state):
    network = QwenImageTransformer(TINY_QWEN_DIT, StandaloneOps)
    network.load_state_dict(state)
    return _forward(network)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
def test_layouts_and_prefixes_load_to_the_same_network(tmp_path, state, reference_output, prefix):
    path = write_safetensors(state, tmp_path / "diffusion_models" / "qwen.safetensors", prefix=prefix)
    model_file = read_diffusion_model(path)
    assert model_file.family.name == "qwen_image"
    assert model_file.config == TINY_QWEN_DIT
    model = StandaloneHost(models_dir=tmp_path, device="cpu").load_diffusion_model(model_file)
    # Same numbers up to BLAS summation order (memory-mapped weights may take other kernel paths).
    torch.testing.assert_close(_forward(model.network), reference_output, atol=1e-6, rtol=0)


def test_bf16_file_computes_in_fp32_without_a_full_precision_copy(tmp_path, state, reference_output):
    path = write_safetensors(state, tmp_path / "q.safetensors", dtype=torch.bfloat16)
    model = StandaloneHost(models_dir=tmp_path, device="cpu").load_diffusion_model(read_diffusion_model(path))
    weights = dict(model.network.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in weights.values())  # kept as stored, cast per layer
    out = _forward(model.network)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_output, atol=0.05, rtol=0.05)  # bf16 weight rounding only


def _expect_error(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        read_diffusion_model(path)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_tensor(tmp_path, state):
    broken = dict(state)
    del broken["transformer_blocks.1.attn.to_k.weight"]
    _expect_error(write_safetensors(broken, tmp_path / "m.safetensors"), "missing", "transformer_blocks.1.attn.to_k.weight")


def test_extra_tensor(tmp_path, state):
    extra = dict(state, **{"transformer_blocks.0.attn.to_qkv.weight": torch.zeros(3, 3)})
    _expect_error(write_safetensors(extra, tmp_path / "e.safetensors"), "not part of it", "to_qkv")


def test_wrong_shape(tmp_path, state):
    bad = dict(state)
    bad["transformer_blocks.1.img_mlp.net.2.weight"] = torch.zeros(64, 100)
    _expect_error(write_safetensors(bad, tmp_path / "s.safetensors"), "wrong shape", "[64, 100]", "[64, 256]")


def test_truncated_file(tmp_path, state):
    path = write_safetensors(state, tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated", "bytes missing")


def test_file_of_another_family(tmp_path):
    flux_like = {
        "img_in.weight": torch.zeros(8, 4), "final_layer.linear.weight": torch.zeros(4, 8),
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(24, 8),
    }
    _expect_error(write_safetensors(flux_like, tmp_path / "flux1-dev.safetensors"), "FLUX.1", "does not run yet")


def test_vae_given_to_the_model_loader(tmp_path):
    vae_like = {"decoder.middle.0.residual.0.gamma": torch.ones(8, 1, 1, 1), "encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3),
                "conv2.weight": torch.zeros(16, 16, 1, 1, 1)}
    _expect_error(write_safetensors(vae_like, tmp_path / "qwen_image_vae.safetensors"), "not a diffusion model",
                  "Qwen-Image VAE", "models/vae")


def test_lora_given_to_the_model_loader(tmp_path):
    lora = {f"transformer_blocks.{i}.attn.to_q.lora_A.weight": torch.zeros(4, 8) for i in range(3)}
    lora.update({f"transformer_blocks.{i}.attn.to_q.lora_B.weight": torch.zeros(8, 4) for i in range(3)})
    _expect_error(write_safetensors(lora, tmp_path / "my_lora.safetensors"), "LoRA")


def test_unrecognised_and_unreadable_files(tmp_path):
    _expect_error(write_safetensors({"foo.weight": torch.zeros(2)}, tmp_path / "x.safetensors"), "not recognised")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    _expect_error(junk, "corrupt")
    pickle = tmp_path / "evil.ckpt"
    pickle.write_bytes(b"not a zip and not a pickle")
    _expect_error(pickle, "could not be read")


def test_diffusers_folders_load(tmp_path, state, reference_output):
    """A diffusers transformer/ folder (sharded, with an index) and the repo root that holds it."""
    import json

    folder = tmp_path / "Qwen-Image" / "transformer"
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        write_safetensors({k: state[k] for k in shard_keys}, folder / name)
        weight_map.update({k: name for k in shard_keys})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for path in (folder, folder.parent):
        model = StandaloneHost(models_dir=tmp_path, device="cpu").load_diffusion_model(read_diffusion_model(path))
        torch.testing.assert_close(_forward(model.network), reference_output, atol=1e-6, rtol=0)


def _memory_and_swap_bytes() -> int:
    fields = dict(line.split(":") for line in open("/proc/meminfo"))
    return sum(int(fields[name].split()[0]) * 1024 for name in ("MemTotal", "SwapTotal"))


def test_a_file_larger_than_memory_is_mapped_not_refused(tmp_path):
    """A bf16 Qwen-Image file (41 GB) on a 32 GB machine: a private writable map of it is refused by Linux's
    default overcommit heuristic unless it reserves no swap. A sparse file larger than this machine's memory
    and swap stands in for it (no disk space used)."""
    import json
    import struct

    if not Path("/proc/meminfo").exists():
        pytest.skip("needs Linux's /proc/meminfo")
    count = _memory_and_swap_bytes() // 2 + (1 << 29)  # bf16 values: more bytes than memory and swap hold
    header = json.dumps({"big": {"dtype": "BF16", "shape": [count], "data_offsets": [0, 2 * count]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "larger_than_memory.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * count)
    if path.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not keep sparse files sparse")
    big = open_checkpoint(path).tensor("big")
    assert big.shape == (count,) and big.dtype == torch.bfloat16
    assert big[-4:].tolist() == [0.0] * 4 and big[:4].tolist() == [0.0] * 4  # pages read on use only
