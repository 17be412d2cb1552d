"""Qwen-Image-Edit's reference latents inside a real ComfyUI: ComfyUI's own Qwen-Image network and ours
agree on every reference placement ComfyUI offers (on even token grids with references no larger than the
image: elsewhere ComfyUI departs from the official placement, which ours follows), and references
attached by ComfyUI's own ReferenceLatent node reach our network through the native MODEL."""

import torch

from comfy_harness import pack_on_comfyui_host, write_tiny_models

CASES = [((8, 12), [(8, 8), (4, 12)]), ((12, 16), [(12, 16)]), ((8, 8), [(4, 4), (8, 8), (4, 8)])]


def _methods_comfyui_knows() -> list[str]:
    """The placements this ComfyUI release's Qwen-Image network implements (0.3.64: index and offset; the
    2026 releases add negative_index and index_timestep_zero)."""
    import inspect

    import comfy.ldm.qwen_image.model as qwen_model

    source = inspect.getsource(qwen_model)
    return ["index", "offset"] + [m for m in ("index_timestep_zero", "negative_index") if f'"{m}"' in source]


def test_comfyuis_network_and_ours_agree_on_reference_placement(comfy_inprocess):
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    from comfyui_mmdit.model_defs.ops import StandaloneOps
    from comfyui_mmdit.model_defs.qwen_image.transformer import QwenImageTransformer, config_from_shapes
    from comfyui_mmdit.tools.tiny_models import TINY_QWEN_DIT as c, tiny_qwen_dit_state_dict

    state = tiny_qwen_dit_state_dict(seed=5)
    ours = QwenImageTransformer(config_from_shapes({k: v.shape for k, v in state.items()}), StandaloneOps).eval()
    ours.load_state_dict(state)
    theirs = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=c.num_layers, attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads, joint_attention_dim=c.joint_attention_dim,
        axes_dims_rope=c.axes_dims_rope, operations=comfy.ops.disable_weight_init).eval()
    theirs.load_state_dict(state, strict=False)  # (ComfyUI's model has extra buffers of its own)
    g = torch.Generator().manual_seed(0)
    for method, (size, refs) in ((m, case) for m in _methods_comfyui_knows() for case in CASES):
        x = torch.randn(2, 16, 1, *size, generator=g)
        references = [torch.randn(2, 16, 1, *r, generator=g) for r in refs]
        context = torch.randn(2, 5, c.joint_attention_dim, generator=g)
        t = torch.rand(2, generator=g)
        with torch.no_grad():
            expected = theirs(x, t, context, ref_latents=references, ref_latents_method=method, transformer_options={})
            got = ours(x, t, context, ref_latents=references, ref_latents_method=method)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{method} {size} {refs}: {m}")


def test_reference_latent_node_reaches_our_network(comfy_inprocess, tmp_path_factory):
    from comfy_extras.nodes_edit_model import ReferenceLatent

    models = tmp_path_factory.mktemp("edit_models")
    write_tiny_models(comfy_inprocess.folder_paths, models, {
        "diffusion_models": "qwen_edit_tiny.safetensors", "text_encoders": "qwen_tiny.safetensors"})
    with pack_on_comfyui_host() as nodes:
        model, = nodes["MMDiTModelLoader"]().load("qwen_edit_tiny.safetensors")
        encoder, = nodes["MMDiTTextEncoderLoader"]().load("qwen_tiny.safetensors", "Qwen-Image")
        positive, = nodes["MMDiTTextEncode"]().encode(encoder, "make the sky green")
        negative, = nodes["MMDiTTextEncode"]().encode(encoder, " ")
        latent, = nodes["MMDiTEmptyLatent"]().generate("Qwen-Image", "custom (width x height)", 64, 48, 1)
        reference = {"samples": torch.randn(1, 16, 1, 6, 8, generator=torch.Generator().manual_seed(2))}
        referenced = ReferenceLatent.execute(positive, reference)  # a v3 node: a class method
        referenced = referenced[0] if isinstance(referenced, tuple) else referenced.args[0]
        assert "reference_latents" in referenced[0][1]

        def sample(conditioning):
            out, = comfy_inprocess.nodes.KSampler().sample(model, 3, 2, 2.5, "euler", "simple", conditioning,
                                                           negative, latent)
            return out["samples"]

        plain, edited = sample(positive), sample(referenced)
    assert torch.isfinite(edited).all() and (edited - plain).abs().max() > 1e-3
