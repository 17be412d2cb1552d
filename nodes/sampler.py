"""MMDiTSampler: sampling with the family's official schedule and guidance, or ComfyUI's samplers and schedulers."""

from __future__ import annotations

from ..model_defs.families import FAMILIES
from ..model_defs.sampling import partial_schedule
from .common import CATEGORY, log
from .conditioning import check_family, check_references, check_text_width
from .host import get_host
from .sampling_request import SamplingRequest

OFFICIAL_SCHEDULE = "official"


GUIDANCE_RULES = ["official", "cfg"]


def _official_values(attribute: str) -> str:
    """e.g. "Qwen-Image 50, HunyuanImage 2.1 base 50, distilled 8"."""
    parts = []
    for spec in FAMILIES.values():
        values = [f"{variant} {getattr(s, attribute):g}" for variant, s in spec.sampling.items()]
        if len(values) == 1:
            values = [values[0].split(" ", 1)[1]]
        parts.append(f"{spec.display_name} {', '.join(values)}")
    return "; ".join(parts)


def _with_embedded_guidance(conditioning, scale: float):
    """The conditioning with the embedded-guidance value every entry carries (as ComfyUI's FluxGuidance
    node writes it), for guidance-distilled networks."""
    return [[context, {**extras, "guidance": scale}] for context, extras in conditioning]


def official_sampling(host, model, spec):
    """The official sampling of the model's variant: from our network's config, or for a model ComfyUI's
    own loaders made, from what the host reads off it (else the family's first variant)."""
    config = host.network_config(model)
    if config is not None:
        return spec.sampling_for(config)
    return spec.sampling.get(host.native_variant(model), spec.default_sampling)


def schedule(host, model, spec, scheduler: str, steps: int, latent_shape, denoise: float):
    """steps + 1 sigmas for the chosen scheduler (the last `steps` of a longer schedule when denoise < 1).

    official: the family's published schedule, whose shift follows from the image size (as the official
    pipeline computes it). Any other name: the host's scheduler over the MODEL's own sampling, which ComfyUI's
    ModelSampling* nodes set (outside ComfyUI: the family's common constant shift)."""
    if scheduler == OFFICIAL_SCHEDULE:
        tokens = spec.image_tokens(latent_shape)
        official = official_sampling(host, model, spec).schedule

        def make(n):
            return official.sigmas(n, tokens)
    else:
        if scheduler not in host.scheduler_names():
            raise ValueError(f"scheduler {scheduler!r} is not available here; choose one of "
                             f"{OFFICIAL_SCHEDULE}, {', '.join(host.scheduler_names())}")

        def make(n):
            return host.scheduler_sigmas(model, scheduler, n)
    return partial_schedule(make, steps, denoise)


class MMDiTSampler:
    DESCRIPTION = ("Samples a latent. The 'official' scheduler and guidance reproduce the official pipeline for "
                   "the same seed (Qwen-Image: 50 steps, true CFG 4.0 with norm rescale, shift from the image size; "
                   "HunyuanImage 2.1: 50 steps, adaptive projected guidance 3.5, shift 5; its distilled model: "
                   "8 steps, embedded guidance 3.25, shift 4, MeanFlow). ComfyUI's samplers and schedulers work too.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        host = get_host()
        first = next(iter(FAMILIES.values())).default_sampling  # widget defaults; workflows carry each family's
        return {"required": {
            "model": ("MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING", {"tooltip": "Used when cfg is above 1 (true CFG: a second pass per step)."}),
            "latent_image": ("LATENT",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise is drawn as ComfyUI and the official pipelines (CPU generator) draw it."}),
            "steps": ("INT", {"default": first.steps, "min": 1, "max": 1000,
                              "tooltip": f"Official values: {_official_values('steps')}."}),
            "cfg": ("FLOAT", {"default": first.guidance_scale, "min": 1.0, "max": 30.0, "step": 0.05, "round": 0.01,
                              "tooltip": "Guidance scale. Two-pass models apply it with the guidance rule below "
                                         "(1 = no guidance, one pass per step); guidance-distilled models "
                                         "(HunyuanImage 2.1 distilled) take it as their embedded guidance, one "
                                         f"pass per step. Official values: {_official_values('guidance_scale')}."}),
            "sampler_name": (list(host.sampler_names()), {"default": "euler"}),
            "scheduler": ([OFFICIAL_SCHEDULE] + list(host.scheduler_names()), {
                "default": OFFICIAL_SCHEDULE,
                "tooltip": "official: the official pipeline's sigma schedule (Qwen-Image: exponential shift from 0.5 "
                           "at 256 to 0.9 at 8192 image tokens, last sigma 0.02; HunyuanImage 2.1: constant shift "
                           "5, distilled 4). The others are ComfyUI's schedulers over the MODEL's own shift, as the "
                           "core KSampler uses it (HunyuanImage: the variant's shift; Qwen-Image: set it with "
                           "ModelSamplingAuraFlow, 3.1 in ComfyUI's template; ComfyUI's default is close to that).",
            }),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Below 1 keeps part of the input latent (image-to-image)."}),
        }, "optional": {
            "guidance": (GUIDANCE_RULES, {
                "default": "official",
                "tooltip": "How cond and uncond combine when cfg > 1. official: the family's rule (Qwen-Image: "
                           "true CFG with norm rescale; HunyuanImage 2.1: adaptive projected mix guidance). "
                           "cfg: plain classifier-free guidance.",
            }),
        }}

    def sample(self, model, positive, negative, latent_image, seed, steps=50, cfg=4.0, sampler_name="euler",
               scheduler=OFFICIAL_SCHEDULE, denoise=1.0, guidance="official"):
        host = get_host()
        spec = host.model_family(model)
        if guidance not in GUIDANCE_RULES:
            raise ValueError(f"guidance {guidance!r} is not one of {', '.join(GUIDANCE_RULES)}")
        official = official_sampling(host, model, spec)
        if official.refines_only:
            raise ValueError(f"this {spec.display_name} diffusion model is a refiner: it refines a finished image and "
                             f"cannot generate one in MMDiT Sampler. Load the base or distilled model here, and the "
                             f"refiner in its own loader for MMDiT Refiner")
        latent = latent_image["samples"]
        if latent.shape[1] != spec.latent_format.channels:
            raise ValueError(
                f"the latent has {latent.shape[1]} channels but {spec.display_name} works on "
                f"{spec.latent_format.channels}-channel latents (use MMDiTEmptyLatent with family "
                f"{spec.display_name}, or encode with its VAE)"
            )
        check_family(spec, FAMILIES, positive=positive, negative=negative)
        check_text_width(host, model, spec, positive=positive, negative=negative)
        check_references(spec, host.model_path(model), positive=positive, negative=negative)
        sigmas = schedule(host, model, spec, scheduler, steps, latent.shape, denoise)
        rule = official.guidance if guidance == "official" else None
        if official.embedded_guidance:
            # A guidance-distilled network: the scale is an input, one pass per step, no negative prompt.
            positive = _with_embedded_guidance(positive, cfg)
            negative = _with_embedded_guidance(negative, cfg)
            cfg, rule, how = 1.0, None, f"embedded guidance {cfg:.2f}"
        else:
            how = f"cfg {cfg:.2f} ({official.guidance_name if rule else 'CFG'})"
        log.info("%s: %d steps, %s, %s, %s, denoise %.2f", spec.display_name, steps, how, sampler_name,
                 scheduler, denoise)
        request = SamplingRequest(
            latent=latent, positive=positive, negative=negative, seed=seed, sigmas=sigmas, cfg=cfg,
            sampler_name=sampler_name, guidance=rule, noise_mask=latent_image.get("noise_mask"),
            batch_index=latent_image.get("batch_index"),
        )
        samples = host.sample(model, request)
        out = {k: v for k, v in latent_image.items() if k not in ("noise_mask", "downscale_ratio_spacial")}
        out["samples"] = samples
        return (out,)
