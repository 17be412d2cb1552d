"""ComfyUI's own refiner VAE (comfy/ldm/hunyuan_video/vae_refiner.py, refiner_vae=True, as comfy/sd.py builds
it for `hunyuan_image_refiner_vae_fp16.safetensors`) against ours, on images, at tiny configs with random
weights. Run in a child process so ComfyUI's modules stay out of this one."""

import json
import subprocess
import sys
import textwrap

from comfy_harness import require_comfyui
from helpers import ROOT
from test_hunyuan_refiner_vae import PARITY_ATOL


def test_hunyuan_image_refiner_vae_matches_comfyui_implementation():
    """Our network built from ComfyUI's layer classes (comfy.ops.manual_cast); both samplers' width rules
    (ComfyUI's shortcut convs carry `.conv`, renamed by the ComfyUI key map), odd latent sizes, batch 2.
    ComfyUI 0.3.x's Encoder returns the latent already paired into 64 channels (a copy of the frame, then
    the frame) and its Decoder takes that form; later releases moved the pairing into the latent format and
    return [B, 32, 1, h, w]: both forms are compared. Measured max abs 4.8e-6
    (0.3.64) and 5.1e-6 (0.8.0), latents up to ~4.7."""
    comfyui = str(require_comfyui())
    script = textwrap.dedent(f"""
        import sys, types, json
        package = types.ModuleType("comfyui_mmdit"); package.__path__ = [{str(ROOT)!r}]
        sys.modules["comfyui_mmdit"] = package
        sys.path[:0] = [{str(ROOT / ".cache" / "torchvision_shim")!r}, {comfyui!r}]
        sys.argv = [sys.argv[0]]
        import torch
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.ldm.hunyuan_video.vae_refiner as comfy_vae
        import comfy.ops
        from comfyui_mmdit.loaders.keymaps.hunyuan_image_refiner_vae import comfyui_to_network
        from comfyui_mmdit.model_defs.hunyuan_image.refiner_vae import (HunyuanImageRefinerVAE,
                                                                        refiner_vae_config_from_shapes)
        from comfyui_mmdit.tools.tiny_models import randomise_refiner_vae_
        worst, paired, largest = 0.0, [], 0.0
        configs = [dict(block_out_channels=[32, 32, 64, 64, 128], num_res_blocks=2, ffactor_spatial=16,
                        ffactor_temporal=4, match=True),
                   dict(block_out_channels=[32, 64, 64, 128], num_res_blocks=1, ffactor_spatial=8,
                        ffactor_temporal=2, match=False)]
        for config in configs:
            match = config.pop("match")
            config.update(in_channels=3, out_channels=3, z_channels=32, downsample_match_channel=match,
                          upsample_match_channel=match)
            halves = torch.nn.ModuleDict(dict(encoder=comfy_vae.Encoder(**config), decoder=comfy_vae.Decoder(**config)))
            randomise_refiner_vae_(halves, 0)
            # ComfyUI 0.8's middle blocks build an unused time-embedding projection (`temb_proj`, never
            # called: no temb); the published file has none.
            state = {{k: v for k, v in halves.state_dict().items() if ".temb_proj." not in k}}
            names = comfyui_to_network(state)
            # Built from ComfyUI's layer classes, as the pack does inside ComfyUI (nodes/host/comfyui_host.py).
            shapes = {{names[k]: v.shape for k, v in state.items()}}
            ours = HunyuanImageRefinerVAE(refiner_vae_config_from_shapes(shapes), operations=comfy.ops.manual_cast)
            ours.load_state_dict({{names[k]: v for k, v in state.items()}})
            scale = config["ffactor_spatial"]
            generator = torch.Generator().manual_seed(1)
            images = torch.rand(2, 3, 3 * scale, 5 * scale, generator=generator) * 2 - 1
            latent = torch.randn(2, 32, 1, 3, 5, generator=generator)
            with torch.no_grad():
                theirs = halves.encoder(images[:, :, None])
                paired.append(theirs.shape[1] == 64)
                if theirs.shape[1] == 64:  # ComfyUI 0.3.x: cat([z, z], 1); both halves are the latent
                    assert torch.equal(theirs[:, :32], theirs[:, 32:])
                    theirs = theirs[:, 32:]
                    decoded = halves.decoder(torch.cat([latent, latent], 1))
                else:
                    decoded = halves.decoder(latent)
                worst = max(worst, (ours.encode(images) - theirs).abs().max().item(),
                            (ours.decoder(latent[:, :, 0]) - decoded[:, :, 0]).abs().max().item())
                largest = max(largest, theirs.abs().max().item())
                assert decoded.shape == (2, 3, 1, 3 * scale, 5 * scale), decoded.shape
        print(json.dumps({{"max_abs": worst, "paired": paired, "largest_latent": largest}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["largest_latent"] > 1  # latents of order one: the bound is not loose by their scale
    assert report["max_abs"] <= PARITY_ATOL, report
