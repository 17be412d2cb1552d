"""Qwen-Image-Edit-2511 is recognised in every file form: ComfyUI's file carries an empty
`__index_timestep_zero__` tensor, diffusers' folder says `"zero_cond_t": true` in transformer/config.json,
and the pack's conversions (GGUF, scaled FP8, bf16) carry the marker into their outputs. A plain Qwen-Image
(or Edit-2509) file stays plain."""

import json

import gguf
import pytest
import torch

from comfyui_mmdit.loaders.checkpoints import open_checkpoint
from comfyui_mmdit.loaders.diffusion_model import read_diffusion_model
from comfyui_mmdit.loaders.errors import ModelFileError
from comfyui_mmdit.loaders.layouts import add_config_markers
from comfyui_mmdit.loaders.layouts.base import Empty, Layout, Take
from comfyui_mmdit.model_defs.qwen_image.edit import ZERO_COND_MARKER
from comfyui_mmdit.nodes.host.standalone import StandaloneHost
from comfyui_mmdit.tools.convert import convert
from comfyui_mmdit.tools.tiny_models import TINY_QWEN_DIT, tiny_qwen_dit_state_dict, write_safetensors

DIFFUSERS_CONFIG = {"_class_name": "QwenImageTransformer2DModel", "_diffusers_version": "0.36.0",
                    "num_layers": TINY_QWEN_DIT.num_layers}


@pytest.fixture(scope="module")
def state():
    return tiny_qwen_dit_state_dict(seed=11)


def _diffusers_repo(root, state, config: dict | None, sharded: bool = False):
    """A diffusers repo with only transformer/: the weights (one file, or two shards and an index) and,
    unless config is None, a config.json holding `config` besides the usual keys."""
    folder = root / "repo" / "transformer"
    if sharded:
        names = sorted(state)
        halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[: len(names) // 2],
                  "diffusion_pytorch_model-00002-of-00002.safetensors": names[len(names) // 2:]}
        for shard, keys in halves.items():
            write_safetensors({k: state[k] for k in keys}, folder / shard, dtype=torch.bfloat16)
        index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    else:
        write_safetensors(state, folder / "diffusion_pytorch_model.safetensors", dtype=torch.bfloat16)
    if config is not None:
        (folder / "config.json").write_text(json.dumps({**DIFFUSERS_CONFIG, **config}))
    return root / "repo"


def _forward_with_reference(network):
    g = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 16, 8, 12, generator=g)
    reference = torch.randn(1, 16, 12, 8, generator=g)
    context = torch.randn(1, 6, TINY_QWEN_DIT.joint_attention_dim, generator=g)
    with torch.no_grad():
        return network(latent, torch.tensor([0.6]), context, ref_latents=[reference])


def _is_2511(model_file) -> bool:
    """What a loaded file says about 2511, checked to agree everywhere it is said."""
    marked = ZERO_COND_MARKER in model_file.state_dict.shapes
    assert model_file.config.zero_cond_t == marked
    assert (ZERO_COND_MARKER in model_file.state_dict) == marked
    return marked


# --- diffusers folders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sharded", [False, True], ids=["one_file", "sharded"])
def test_diffusers_folder_with_zero_cond_t_loads_as_2511(tmp_path, state, sharded):
    repo = _diffusers_repo(tmp_path, state, {"zero_cond_t": True}, sharded)
    weights = next((repo / "transformer").glob("*.index.json" if sharded else "*.safetensors"))
    for path in (repo, repo / "transformer", weights):  # the repo, its transformer/ folder, the weights file
        model_file = read_diffusion_model(path)
        assert _is_2511(model_file)
        assert model_file.state_dict.shapes[ZERO_COND_MARKER] == (0,)
        assert model_file.state_dict[ZERO_COND_MARKER].numel() == 0
    model = StandaloneHost(models_dir=tmp_path, device="cpu").load_diffusion_model(model_file)
    assert model.network.zero_cond_t
    assert tuple(model.network.state_dict()[ZERO_COND_MARKER].shape) == (0,)


def test_diffusers_2511_computes_as_comfyuis_2511_file(tmp_path, state):
    """The same weights as ComfyUI's file (marker tensor) and as a diffusers folder (config flag) give the
    same network: identical outputs with a reference image, where the timestep-zero modulation acts."""
    repo = _diffusers_repo(tmp_path, state, {"zero_cond_t": True})
    single = write_safetensors({**state, ZERO_COND_MARKER: torch.empty(0)},
                               tmp_path / "comfy" / "edit_2511.safetensors", dtype=torch.bfloat16)
    host = StandaloneHost(models_dir=tmp_path, device="cpu")
    from_folder = host.load_diffusion_model(read_diffusion_model(repo)).network
    from_file = host.load_diffusion_model(read_diffusion_model(single)).network
    torch.testing.assert_close(_forward_with_reference(from_folder), _forward_with_reference(from_file),
                               atol=0, rtol=0)
    from_folder.zero_cond_t = False  # the check can fail: without the modulation the output differs
    assert not torch.equal(_forward_with_reference(from_folder), _forward_with_reference(from_file))


@pytest.mark.parametrize("config", [{"zero_cond_t": False}, {}, {"zero_cond_t": None}, None],
                         ids=["false", "absent", "null", "no_config_json"])
def test_diffusers_folder_without_zero_cond_t_loads_as_2509(tmp_path, state, config):
    model_file = read_diffusion_model(_diffusers_repo(tmp_path, state, config))
    assert not _is_2511(model_file)
    assert model_file.config == TINY_QWEN_DIT


@pytest.mark.parametrize("text, fragment", [(b"{not json", "not a readable model configuration"),
                                            (json.dumps({"zero_cond_t": "yes"}).encode(), "neither true nor false")])
def test_unreadable_flag_is_refused_not_guessed(tmp_path, state, text, fragment):
    repo = _diffusers_repo(tmp_path, state, {})
    (repo / "transformer" / "config.json").write_bytes(text)
    with pytest.raises(ModelFileError, match=fragment) as info:
        read_diffusion_model(repo)
    assert info.value.path.endswith("config.json")


def test_config_markers_are_a_generic_layout_rule(tmp_path):
    """Any layout may name flags: a true one adds an Empty source, a marker already stored as a tensor is
    kept as the file's, and a layout naming none never reads a config.json."""
    layout = Layout("toy", config_markers={"flag": "__marker__", "other": "__other__"})
    (tmp_path / "config.json").write_text(json.dumps({"flag": True, "other": False}))
    plan = {"w": Take("w")}
    add_config_markers(plan, layout, tmp_path / "weights.safetensors")
    assert plan == {"w": Take("w"), "__marker__": Empty()}
    stored = {"__marker__": Take("__marker__")}
    add_config_markers(stored, layout, tmp_path)
    assert stored == {"__marker__": Take("__marker__")}
    assert Empty().shape({}) == (0,) and Empty().keys() == () and Empty().read(None).dtype == torch.float32


# --- conversions keep the marker ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfyui_2511(tmp_path_factory, state):
    return write_safetensors({**state, ZERO_COND_MARKER: torch.empty(0)},
                             tmp_path_factory.mktemp("src") / "qwen_image_edit_2511_bf16.safetensors",
                             dtype=torch.bfloat16)


@pytest.mark.parametrize("qtype, suffix", [("Q8_0", ".gguf"), ("fp8_scaled", ".safetensors"),
                                           ("bf16", ".safetensors")])
def test_converted_2511_keeps_the_marker(tmp_path, comfyui_2511, qtype, suffix):
    """Stored as an empty tensor in every output: GGUF holds zero-element tensors (the gguf package writes
    and reads them; ggml accepts dimensions of 0), so no metadata stand-in is needed."""
    out = convert(comfyui_2511, tmp_path / f"edit_2511_{qtype}{suffix}", qtype)
    assert ZERO_COND_MARKER in open_checkpoint(out).keys()
    model_file = read_diffusion_model(out)
    assert _is_2511(model_file)
    assert model_file.quantized == (qtype != "bf16")
    if suffix == ".gguf":  # ComfyUI-GGUF reads files with the gguf package: the marker is there for it too
        tensor = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == ZERO_COND_MARKER)
        assert tensor.n_elements == 0


@pytest.mark.parametrize("qtype, suffix", [("Q8_0", ".gguf"), ("fp8_scaled", ".safetensors")])
def test_converted_diffusers_2511_writes_the_marker_into_the_file(tmp_path, state, qtype, suffix):
    """A diffusers folder's flag becomes the marker tensor in a converted single file (which has no
    config.json beside it to say so)."""
    repo = _diffusers_repo(tmp_path, state, {"zero_cond_t": True})
    out = convert(repo / "transformer", tmp_path / "converted" / f"edit_2511{suffix}", qtype)
    assert ZERO_COND_MARKER in open_checkpoint(out).keys()
    assert _is_2511(read_diffusion_model(out))


@pytest.mark.parametrize("qtype, suffix", [("Q8_0", ".gguf"), ("fp8_scaled", ".safetensors")])
def test_plain_qwen_image_stays_plain(tmp_path, state, qtype, suffix):
    source = write_safetensors(state, tmp_path / "qwen_image_bf16.safetensors", dtype=torch.bfloat16)
    assert not _is_2511(read_diffusion_model(source))
    out = convert(source, tmp_path / f"qwen_image{suffix}", qtype)
    assert ZERO_COND_MARKER not in open_checkpoint(out).keys()
    assert not _is_2511(read_diffusion_model(out))
