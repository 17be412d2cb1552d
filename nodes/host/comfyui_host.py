"""The ComfyUI host: the pack's models under ComfyUI's own model classes, memory manager and samplers.

Everything that touches ComfyUI's internals is in this module. It is written against the surface that
ComfyUI 0.3.64 (October 2025) and the 2026 releases share; where they differ the branch is marked
"[version]" so the next change has one place to go.

The diffusion model a loader returns is a native MODEL: a ModelPatcher around a subclass of ComfyUI's own
model class for the family (e.g. comfy.model_base.QwenImage) whose `diffusion_model` is our network, built
from ComfyUI's `operations`. So the core KSampler, ModelSampling* nodes, LoRA loaders (with the family's
LoRA key formats), CFGNorm, block-swap patches and low-VRAM partial loading all work on it.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import torch

import comfy.lora
import comfy.model_base
import comfy.model_management as mm
import comfy.ops
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.supported_models
import comfy.utils
import folder_paths

from ...loaders.finite import check_finite
from ...model_defs.families import FAMILIES
from ...model_defs.guidance import as_sampler_cfg_function
from ...model_defs.spec import REFERENCE_LATENTS, REFERENCE_METHOD, FamilySpec
from ..sampling_request import OVERFLOW_REMEDY, SamplingRequest
from .comfy_bindings import BINDINGS, binding

log = logging.getLogger("ComfyUI-MMDiT")

WEIGHT_DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
MODEL_TYPES = {"FLUX": comfy.model_base.ModelType.FLUX, "FLOW": comfy.model_base.ModelType.FLOW}


def _sampling_step(transformer_options: dict) -> str:
    """"at step i of n (sigma s)" from what ComfyUI's samplers put in transformer_options."""
    current, schedule = transformer_options.get("sigmas"), transformer_options.get("sample_sigmas")
    if current is None:
        return ""
    sigma = float(current.reshape(-1)[0])
    if schedule is None:
        return f"at sigma {sigma:.4f}"
    index = int((schedule.reshape(-1).float().cpu() - sigma).abs().argmin())
    return f"at step {index + 1} of {schedule.numel() - 1} (sigma {sigma:.4f})"


def _with_diffusion_model_wrappers(network_class: type) -> type:
    """The network class, with ComfyUI's DIFFUSION_MODEL wrappers honoured around forward (as native
    models do), so extensions that wrap the diffusion model (caches, block swaps) see ours too; and its
    output checked for NaN/Inf, under the core KSampler as under ours (`source_path` names the file)."""

    class Wrapped(network_class):
        source_path = "the diffusion model"

        def forward(self, *args, transformer_options=None, **kwargs):
            transformer_options = transformer_options or {}
            wrappers = comfy.patcher_extension.get_all_wrappers(
                comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options
            )
            call = super().forward
            out = comfy.patcher_extension.WrapperExecutor.new_class_executor(call, self, wrappers).execute(
                *args, transformer_options=transformer_options, **kwargs
            )
            return check_finite(out, self, self.source_path, "diffusion model",
                                lambda: f"{_sampling_step(transformer_options)} ({out.dtype})".strip(),
                                OVERFLOW_REMEDY)

    Wrapped.__name__ = Wrapped.__qualname__ = network_class.__name__
    return Wrapped


def _cond_value(value):
    """A network input from a conditioning entry, as the cond object ComfyUI batches and moves."""
    import comfy.conds

    if not isinstance(value, torch.Tensor):
        value = torch.tensor([float(value)])  # a scalar (embedded guidance): one value per entry
    return comfy.conds.CONDRegular(value)


def _reference_conds(model, spec: FamilySpec, kwargs: dict, native_out: dict) -> dict:
    """Reference images (ComfyUI's `reference_latents`) for a family whose native class does not pass them
    (or that has none); where the native class already did (Qwen-Image), nothing. A family that takes no
    reference images refuses them rather than sampling as if they were not there."""
    import comfy.conds

    adapter = spec.conditioning
    if not kwargs.get(REFERENCE_LATENTS):
        return {}
    if adapter.reference_latents is None:
        raise ValueError(f"{spec.display_name} takes no reference images, but the conditioning holds "
                         f"{len(kwargs[REFERENCE_LATENTS])}: remove them (ReferenceLatent / edit nodes), or use an "
                         f"edit model")
    if adapter.reference_latents in native_out:
        return {}
    out = {adapter.reference_latents: comfy.conds.CONDList(
        [model.process_latent_in(latent) for latent in kwargs[REFERENCE_LATENTS]])}
    if kwargs.get(REFERENCE_METHOD) is not None and adapter.reference_method is not None:
        out[adapter.reference_method] = comfy.conds.CONDConstant(kwargs[REFERENCE_METHOD])
    return out


def _model_class(spec: FamilySpec, sampling) -> type:
    """A subclass of ComfyUI's native model class for the family, building our network instead."""
    bound = binding(spec)
    native = getattr(comfy.model_base, bound.native_model, comfy.model_base.BaseModel)

    class MMDiTModel(native):
        mmdit_family = spec

        def __init__(self, model_config, device=None):
            # The native __init__ hard-codes its own network class, so call BaseModel's directly and
            # restore what the native one adds (the cond names that count in the memory estimate).
            comfy.model_base.BaseModel.__init__(
                self, model_config, model_config.mmdit_model_type, device=device, unet_model=model_config.mmdit_builder
            )
            self.memory_usage_factor_conds = model_config.mmdit_memory_conds

        def extra_conds(self, **kwargs):
            # The native conds, then the family's own inputs from the same adapter the standalone host
            # uses (so e.g. the text mask ComfyUI's Qwen-Image drops is honoured, and ByT5 masks pass).
            out = super().extra_conds(**kwargs)
            for name in spec.conditioning.inputs.values():
                out.pop(name, None)
            out.update(_reference_conds(self, spec, kwargs, out))
            if sampling.embedded_guidance and "guidance" not in kwargs:
                kwargs["guidance"] = sampling.guidance_scale  # the variant's default, not ComfyUI's 6.0
            for name, value in spec.conditioning.network_inputs(kwargs).items():
                out[name] = _cond_value(value)
            return out

    MMDiTModel.__name__ = MMDiTModel.__qualname__ = f"MMDiT{bound.native_model}"
    return MMDiTModel


def _model_config(spec: FamilySpec, network_config, attention_backend: str):
    bound = binding(spec)
    sampling = spec.sampling_for(network_config)
    native = getattr(comfy.supported_models, bound.native_model)
    model_class = _model_class(spec, sampling)
    network_class = _with_diffusion_model_wrappers(spec.network_class)

    def build_network(dtype=None, device=None, operations=None, **_unet_config):
        # Built on the meta device: the loader assigns the file's (memory-mapped) tensors afterwards,
        # so no memory is allocated for weights that are about to be replaced.
        return network_class(network_config, operations, dtype=dtype, device="meta", attention_backend=attention_backend)

    class MMDiTModelConfig(native):
        mmdit_builder = staticmethod(build_network)
        mmdit_model_type = MODEL_TYPES[bound.model_type]
        mmdit_memory_conds = bound.memory_conds
        if bound.family_shift:
            sampling_settings = {**getattr(native, "sampling_settings", {}), "shift": sampling.shift}

        def get_model(self, state_dict, prefix="", device=None):
            return model_class(self, device=device)

    return MMDiTModelConfig({"image_model": f"mmdit_{spec.name}"})


_Backup = collections.namedtuple("Backup", ["weight", "inplace_update"])  # the shape of ModelPatcher's backup records


class MMDiTModelPatcher(comfy.model_patcher.ModelPatcher):
    """ComfyUI's ModelPatcher, plus LoRA merging into quantized weights.

    ComfyUI's own merge casts a weight to float32 by allocating an empty float tensor and copying the
    stored bytes into it, which is wrong for quantized data; here a quantized weight is dequantized on the
    target device, patched, and handed to its layer's set_weight (which keeps it at 8 bits)."""

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        from ...loaders.quant.tensor import is_quantized

        weight, set_func, _ = comfy.model_patcher.get_key_weight(self.model, key)
        if not is_quantized(weight) or set_func is None:
            return super().patch_weight_to_device(key, device_to, inplace_update)
        if key not in self.backup:  # the original quantized weight, restored by unpatch_model
            self.backup[key] = _Backup(weight, False)
        merged = comfy.lora.calculate_weight(self.patches[key], weight.dequantize(torch.float32, device=device_to), key)
        set_func(merged, inplace_update=False, seed=comfy.model_patcher.string_to_seed(key))


class _Holder(torch.nn.Module):
    """A plain module around a text encoder or VAE: ModelPatcher writes bookkeeping attributes (device,
    loaded memory, ...) onto the module it manages, which transformers models refuse (read-only
    properties)."""

    def __init__(self, module):
        super().__init__()
        self.module = module


class ComfyManaged:
    """A text encoder or VAE under ComfyUI's memory manager."""

    def __init__(self, module, load_device, offload_device, dtype):
        self.module = module
        self.dtype = dtype
        self.patcher = comfy.model_patcher.ModelPatcher(_Holder(module), load_device=load_device,
                                                        offload_device=offload_device)
        self.load_device = load_device

    def load(self, memory_required: int = 0) -> torch.device:
        mm.load_models_gpu([self.patcher], memory_required=memory_required)
        return self.load_device


GGUF_FOLDERS = ("diffusion_models", "text_encoders")


def _register_gguf_extension() -> None:
    """Let ComfyUI's folder lists show .gguf files in the model folders this pack reads GGUF from.
    (The extension sets may be shared between folders: each gets its own extended copy.)"""
    for kind in GGUF_FOLDERS:
        paths, extensions = folder_paths.folder_names_and_paths[kind]
        if ".gguf" not in extensions:
            folder_paths.folder_names_and_paths[kind] = (paths, set(extensions) | {".gguf"})
            getattr(folder_paths, "filename_list_cache", {}).pop(kind, None)


# Model kinds this pack adds to ComfyUI's folder list: kind -> (sub-folders of models/, file extensions).
PACK_FOLDERS = {"prompt_enhancers": (("prompt_enhancers", "LLM"), {".safetensors", ".sft", ".gguf"})}


def _register_pack_folders() -> None:
    """Add the pack's own model kinds (models/prompt_enhancers and models/LLM for the prompt enhancer) to
    ComfyUI's folders, keeping any paths extra_model_paths.yaml already gave the kind; the kinds ComfyUI
    itself defines are not touched."""
    for kind, (subfolders, extensions) in PACK_FOLDERS.items():
        for sub in subfolders:
            folder_paths.add_model_folder_path(kind, str(Path(folder_paths.models_dir) / sub))
        paths, known = folder_paths.folder_names_and_paths[kind]
        folder_paths.folder_names_and_paths[kind] = (paths, set(known) | extensions)
        getattr(folder_paths, "filename_list_cache", {}).pop(kind, None)


class ComfyUIHost:
    name = "comfyui"

    def __init__(self):
        _register_gguf_extension()
        _register_pack_folders()

    # --- files -------------------------------------------------------------------------------------
    def folder_files(self, kind: str) -> list[str]:
        names = list(folder_paths.get_filename_list(kind))
        for folder in folder_paths.get_folder_paths(kind):  # Hugging Face model folders, for text encoders
            root = Path(folder)
            if root.is_dir():
                names += [p.parent.relative_to(root).as_posix() for p in root.rglob("config.json")
                          if p.parent != root]
        return sorted(set(names))

    def model_folders(self, kind: str) -> list[Path]:
        """The existing folders of a model kind, in ComfyUI's search order (extra_model_paths.yaml included)."""
        return [Path(folder) for folder in folder_paths.get_folder_paths(kind) if Path(folder).is_dir()]

    def full_path(self, kind: str, name: str) -> Path:
        path = folder_paths.get_full_path(kind, name)
        if path is None:
            for folder in folder_paths.get_folder_paths(kind):
                if (Path(folder) / name).is_dir():
                    return Path(folder) / name
            raise FileNotFoundError(f"{name} was not found in the {kind} folders")
        return Path(path)

    def tokenizer_places(self, name: str) -> list:
        from ...loaders.tokenizers import TokenizerPlace

        bundled = Path(comfy.utils.__file__).parent / "text_encoders" / f"{name}_tokenizer"
        return [TokenizerPlace(bundled, "the tokenizer ComfyUI ships")]

    # --- devices and dtypes --------------------------------------------------------------------------
    def intermediate_device(self) -> torch.device:
        return mm.intermediate_device()

    def _devices(self, kind: str):
        if kind == "text_encoder":
            return mm.text_encoder_device(), mm.text_encoder_offload_device()
        if kind == "vae":
            return mm.vae_device(), mm.vae_offload_device()
        raise ValueError(f"unknown module kind {kind!r}")

    def module_dtype(self, kind: str) -> torch.dtype:
        """The compute dtype of a text encoder or VAE on its device: bf16 where the device runs it well,
        else fp32 (fp16 overflows in these models). Weights stay as stored; layers cast at use."""
        load, _ = self._devices(kind)
        if kind == "vae":
            return mm.vae_dtype(load, [torch.bfloat16, torch.float32])
        return torch.bfloat16 if mm.should_use_bf16(load, prioritize_performance=False) else torch.float32

    def operations(self, kind: str):
        import comfy.ops

        return comfy.ops.manual_cast  # cast at use: what lets the memory manager load layer by layer

    def manage(self, module: torch.nn.Module, kind: str, dtype: torch.dtype | None = None) -> ComfyManaged:
        load, offload = self._devices(kind)
        return ComfyManaged(module, load, offload, dtype or self.module_dtype(kind))

    def free_memory(self, device) -> int:
        return mm.get_free_memory(device)

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, mm.OOM_EXCEPTION)

    def load_diffusion_model(self, model_file, weight_dtype: str = "default", attention_backend: str = "auto"):
        """A native MODEL (ModelPatcher) for a checked diffusion-model file (loaders.diffusion_model)."""
        from ...loaders.assign import assign_state_dict
        from ...loaders.quant.ops import quantized_ops

        spec = model_file.family
        load_device = mm.get_torch_device()
        offload_device = mm.unet_offload_device()
        config = _model_config(spec, model_file.config, attention_backend)
        keep_quantized = model_file.quantized and weight_dtype == "default"
        if keep_quantized:
            config.custom_operations = quantized_ops(comfy.ops.manual_cast)
        if weight_dtype == "default":
            # Quantized weights stay quantized: the compute dtype is chosen as for a bf16 file.
            unet_dtype = mm.unet_dtype(model_params=model_file.parameter_count,
                                       supported_dtypes=config.supported_inference_dtypes,
                                       weight_dtype=torch.bfloat16 if keep_quantized else model_file.stored_dtype)
        else:
            unet_dtype = WEIGHT_DTYPES[weight_dtype]
        manual_cast = mm.unet_manual_cast(unet_dtype, load_device, config.supported_inference_dtypes)
        if keep_quantized and manual_cast is None:
            manual_cast = unet_dtype  # quantized layers always cast; say so to the model's input casting
        config.set_inference_dtype(unet_dtype, manual_cast)

        model = config.get_model({}, device=offload_device)
        model.diffusion_model.source_path = model_file.path
        assign_state_dict(model.diffusion_model, model_file.state_dict, model_file.path,
                          model_file.description, dtype=None if keep_quantized else unet_dtype)
        if offload_device.type != "cpu":
            model.diffusion_model.to(offload_device)
        log.info("loaded %s as %s weights, compute %s", model_file.description, unet_dtype, manual_cast or unet_dtype)
        return MMDiTModelPatcher(model, load_device=load_device, offload_device=offload_device)

    def model_family(self, model) -> FamilySpec:
        base = getattr(model, "model", None)
        spec = getattr(base, "mmdit_family", None)
        if spec is not None:
            return spec
        for name, bound in BINDINGS.items():  # ComfyUI's own loaders' models work with our nodes too
            if type(base).__name__ in bound.native_models and name in FAMILIES:
                return FAMILIES[name]
        raise TypeError(
            f"this MODEL ({type(base).__name__}) is not a family this pack samples "
            f"({', '.join(s.display_name for s in FAMILIES.values())})"
        )

    def native_variant(self, model) -> str | None:
        """The variant of a model ComfyUI's own loaders made (no config of ours), if its binding can tell."""
        base = getattr(model, "model", None)
        for name, bound in BINDINGS.items():
            if type(base).__name__ in bound.native_models and bound.native_variant is not None:
                return bound.native_variant(base.diffusion_model)
        return None

    def model_path(self, model) -> str | None:
        """The diffusion model's file, where this pack loaded it (for messages); None for ComfyUI's loaders."""
        return getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "source_path", None)

    def network_config(self, model):
        """Our network's config; None for a network of ComfyUI's own loaders (no config recorded)."""
        return getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "config", None)

    # --- sampling ------------------------------------------------------------------------------------
    def sampler_names(self) -> list[str]:
        return list(comfy.samplers.KSampler.SAMPLERS)

    def scheduler_names(self) -> list[str]:
        return list(comfy.samplers.KSampler.SCHEDULERS)

    def scheduler_sigmas(self, model, scheduler: str, steps: int) -> torch.Tensor:
        """Sigmas from one of ComfyUI's schedulers over the MODEL's own sampling, so a ModelSampling* node
        before the sampler (ModelSamplingAuraFlow's shift, say) applies as it does to the core KSampler."""
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()

    def loaded_network(self, model) -> tuple[torch.nn.Module, torch.device, torch.dtype]:
        """(network, device, compute dtype) of a MODEL loaded for use by ComfyUI's memory manager (low-VRAM
        partial loading included), for a stage that runs its own loop (the refiner)."""
        mm.load_models_gpu([model])
        base = model.model
        return base.diffusion_model, model.load_device, base.manual_cast_dtype or base.get_dtype()

    def progress(self, total: int, label: str = ""):
        return comfy.utils.ProgressBar(total)

    def throw_if_interrupted(self) -> None:
        mm.throw_exception_if_processing_interrupted()

    def sample(self, model, request: SamplingRequest) -> torch.Tensor:
        import latent_preview

        latent = comfy.sample.fix_empty_latent_channels(model, request.latent)
        if request.add_noise:
            noise = comfy.sample.prepare_noise(latent, request.seed, request.batch_index)
        else:
            noise = torch.zeros(latent.size(), dtype=latent.dtype, layout=latent.layout, device="cpu")
        if request.guidance is not None and request.cfg != 1.0 and "sampler_cfg_function" not in model.model_options:
            model = model.clone()
            extras = request.positive[0][1] if request.positive else {}
            model.set_model_sampler_cfg_function(  # the family's rule, on velocities, stepped by our schedule
                as_sampler_cfg_function(lambda scale: request.guidance(scale, extras), request.sigmas))
        steps = len(request.sigmas) - 1
        callback = latent_preview.prepare_callback(model, steps)
        return comfy.sample.sample_custom(
            model, noise, request.cfg, comfy.samplers.sampler_object(request.sampler_name), request.sigmas,
            request.positive, request.negative, latent, noise_mask=request.noise_mask, callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=request.seed,
        )
