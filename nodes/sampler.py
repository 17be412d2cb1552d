"""MMDiTSampler: sampling with the family's official defaults, on the host's samplers and schedulers."""

from __future__ import annotations

from ..model_defs.sampling import partial_schedule
from .common import CATEGORY, log
from .conditioning import check_text_width
from .host import get_host
from .sampling_request import SamplingRequest

FAMILY_SCHEDULE = "family default"


def resolve_settings(spec, steps: int, cfg: float, shift: float) -> tuple[int, float, float | None]:
    """0 means "the family's default" for steps, cfg and shift (shift None = the official dynamic shift)."""
    return (steps or spec.default_steps, cfg if cfg > 0 else spec.default_cfg, shift if shift > 0 else None)


def schedule(host, spec, scheduler: str, steps: int, shift: float | None, latent_shape, denoise: float):
    """steps + 1 sigmas for the chosen scheduler (the last `steps` of a longer schedule when denoise < 1)."""
    if scheduler == FAMILY_SCHEDULE:
        tokens = spec.image_tokens(latent_shape)

        def make(n):
            return spec.schedule.sigmas(n, tokens, shift=shift)
    else:
        constant = shift if shift is not None else spec.common_shift
        if scheduler not in host.scheduler_names():
            raise ValueError(f"scheduler {scheduler!r} is not available here; choose one of "
                             f"{FAMILY_SCHEDULE}, {', '.join(host.scheduler_names())}")

        def make(n):
            return host.scheduler_sigmas(scheduler, n, constant)
    return partial_schedule(make, steps, denoise)


class MMDiTSampler:
    DESCRIPTION = ("Samples a latent with the model family's official settings where a value is 0: "
                   "Qwen-Image: 50 steps, true CFG 4.0 with the official norm rescale, and the official "
                   "resolution-dependent shift. Uses ComfyUI's samplers and schedulers.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        host = get_host()
        return {"required": {
            "model": ("MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING", {"tooltip": "Used when cfg is above 1 (true CFG: a second pass per step)."}),
            "latent_image": ("LATENT",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise is drawn as ComfyUI and the official pipelines (CPU generator) draw it."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                              "tooltip": "0 = the family's default (Qwen-Image: 50)."}),
            "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance. 0 = the family's default (Qwen-Image: 4.0). "
                                         "1 = no guidance (one pass per step)."}),
            "sampler_name": (list(host.sampler_names()), {"default": "euler"}),
            "scheduler": ([FAMILY_SCHEDULE] + list(host.scheduler_names()), {
                "default": FAMILY_SCHEDULE,
                "tooltip": "family default: the official pipeline's sigma schedule. The others are ComfyUI's "
                           "schedulers over a flow model shifted by 'shift'.",
            }),
            "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                "tooltip": "0 = the family's default: with 'family default' the official "
                                           "resolution-dependent shift, with other schedulers Qwen-Image's "
                                           "common 3.1. A value > 0 sets a constant shift."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Below 1 keeps part of the input latent (image-to-image)."}),
        }}

    def sample(self, model, positive, negative, latent_image, seed, steps=0, cfg=0.0, sampler_name="euler",
               scheduler=FAMILY_SCHEDULE, shift=0.0, denoise=1.0):
        host = get_host()
        spec = host.model_family(model)
        latent = latent_image["samples"]
        if latent.shape[1] != spec.latent_format.channels:
            raise ValueError(
                f"the latent has {latent.shape[1]} channels but {spec.display_name} works on "
                f"{spec.latent_format.channels}-channel latents (use MMDiTEmptyLatent with family "
                f"{spec.display_name}, or encode with its VAE)"
            )
        check_text_width(host, model, spec, positive=positive, negative=negative)
        steps, cfg, shift = resolve_settings(spec, steps, cfg, shift)
        sigmas = schedule(host, spec, scheduler, steps, shift, latent.shape, denoise)
        log.info("%s: %d steps, cfg %.2f, %s, %s, shift %s, denoise %.2f", spec.display_name, steps, cfg,
                 sampler_name, scheduler, "official" if shift is None else shift, denoise)
        request = SamplingRequest(
            latent=latent, positive=positive, negative=negative, seed=seed, sigmas=sigmas, cfg=cfg,
            sampler_name=sampler_name, guidance=spec.guidance, noise_mask=latent_image.get("noise_mask"),
            batch_index=latent_image.get("batch_index"),
        )
        samples = host.sample(model, request)
        out = {k: v for k, v in latent_image.items() if k not in ("noise_mask", "downscale_ratio_spacial")}
        out["samples"] = samples
        return (out,)
