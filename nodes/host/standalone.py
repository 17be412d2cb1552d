"""The standalone host: runs the pack's nodes without ComfyUI (tests, the command line).

It keeps to what a host must do and no more: pick a device, find model files in one or more models
folders (searched in order: the command line's demo mode puts a folder of tiny stand-ins after the real
one), show progress on stderr, and sample with a flow-matching Euler loop. Everything a user would tune
lives in ComfyUI; here the choices are fixed and stated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ...loaders.formats.open import MODEL_FILE_SUFFIXES
from ...loaders.tokenizers import TokenizerPlace
from ...model_defs.spec import FamilySpec
from ...model_defs.sampling import shifted_sigmas
from .progress import StderrProgress

# ComfyUI's folder names, with the older aliases it also reads.
FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "prompt_enhancers": ("prompt_enhancers", "LLM"),  # the pack's own kind; LLM/ is where other packs keep them
}
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SAMPLERS = ("euler",)
SCHEDULERS = ("simple",)


@dataclass
class StandaloneModel:
    """The MODEL value outside ComfyUI: the network and what sampling needs to know about it."""

    network: torch.nn.Module
    family: FamilySpec
    device: torch.device
    dtype: torch.dtype
    path: str = ""


class Managed:
    """A module the host moves to its device for use (ComfyUI's memory manager does this inside ComfyUI)."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        self.module = module
        self.load_device = device
        self.dtype = dtype

    def load(self, memory_required: int = 0) -> torch.device:
        self.module.to(self.load_device)
        return self.load_device


DEVICE_FORMS = "cpu, cuda, cuda:N (N = 0, 1, ...), mps"


def resolve_device(requested: str | None = None) -> torch.device:
    """The device named by `requested` (else MMDIT_DEVICE, else cuda when available, else cpu), checked to
    exist here; ValueError says why not."""
    requested = requested or os.environ.get("MMDIT_DEVICE")
    if not requested:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", requested.strip().lower())
    if match is None:
        raise ValueError(f"{requested!r} is not a device; valid forms: {DEVICE_FORMS}")
    kind, index = match.group(1), None if match.group(2) is None else int(match.group(2))
    if kind == "cuda":
        _check_cuda(requested, index)
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{requested!r}: Apple's MPS is not available on this machine; use cpu")
    return torch.device(kind, index) if index is not None else torch.device(kind)


def _check_cuda(requested: str, index: int | None) -> None:
    if not torch.cuda.is_available():
        why = ("this torch was built without CUDA" if torch.version.cuda is None
               else "torch finds no usable NVIDIA GPU or driver")
        raise ValueError(f"{requested!r}: CUDA is not available on this machine ({why}); use cpu")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        present = ", ".join(f"cuda:{i}" for i in range(count))
        raise ValueError(f"{requested!r}: there is no such GPU; this machine has {count}: {present}")


class StandaloneHost:
    name = "standalone"

    def __init__(self, models_dir=None, device=None, input_dir=None):
        """models_dir: a models folder, or a list of them searched in order (default: MMDIT_MODELS_DIR or
        ./models); device: as resolve_device takes it; input_dir: where LoadImage finds images (as
        ComfyUI's input/ folder; default ./input), or a list of folders searched in order (the command
        line's demo mode adds one holding stand-ins for missing images)."""
        roots = models_dir if isinstance(models_dir, (list, tuple)) else [models_dir]
        self.models_dirs = [Path(root or os.environ.get("MMDIT_MODELS_DIR", "models")) for root in roots]
        self.models_dir = self.models_dirs[0]
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        folders = input_dir if isinstance(input_dir, (list, tuple)) else [input_dir]
        self.input_dirs = [Path(folder or "input") for folder in folders]
        self.input_dir = self.input_dirs[0]

    def input_files(self) -> list[str]:
        """Image files in the input folders (names relative to their folder), as ComfyUI's LoadImage lists them."""
        names = set()
        for folder in self.input_dirs:
            if folder.is_dir():
                names.update(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return sorted(names)

    def input_path(self, name: str) -> Path:
        """The file LoadImage reads for `name`: in the first input folder that holds it."""
        for folder in self.input_dirs:
            if (folder / name).is_file():
                return folder / name
        return self.input_dir / name

    # --- files -------------------------------------------------------------------------------------
    def folder_files(self, kind: str) -> list[str]:
        names = []
        for folder in self._folders(kind):
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.name.lower().endswith(MODEL_FILE_SUFFIXES):
                    names.append(path.relative_to(folder).as_posix())
                elif path.is_dir() and (path / "config.json").exists():
                    names.append(path.relative_to(folder).as_posix())  # a Hugging Face model folder
        return sorted(set(names))

    def full_path(self, kind: str, name: str) -> Path:
        for folder in self._folders(kind):
            candidate = folder / name
            if candidate.exists():
                return candidate
        searched = ", ".join(str(f) for f in self._folders(kind, existing=False))
        raise FileNotFoundError(f"{name} was not found in {searched}")

    def model_folders(self, kind: str) -> list[Path]:
        """The existing folders of a model kind ("text_encoders", ...), in search order."""
        return self._folders(kind)

    def _folders(self, kind: str, existing: bool = True) -> list[Path]:
        folders = [root / sub for root in self.models_dirs for sub in FOLDERS[kind]]
        return [f for f in folders if f.is_dir()] if existing else folders

    def tokenizer_places(self, name: str) -> list[TokenizerPlace]:
        """Where else than beside the weights a tokenizer may be: each models folder's text_encoders/, and the
        one a ComfyUI checkout ships (found through COMFYUI_PATH)."""
        places = [TokenizerPlace(root / "text_encoders" / f"{name}_tokenizer", "the models folder")
                  for root in self.models_dirs]
        comfyui = os.environ.get("COMFYUI_PATH")
        if comfyui:
            places.append(TokenizerPlace(Path(comfyui) / "comfy" / "text_encoders" / f"{name}_tokenizer",
                                         "the tokenizer ComfyUI ships, found through COMFYUI_PATH"))
        return places

    # --- devices and dtypes --------------------------------------------------------------------------
    def compute_dtype(self, supported=(torch.bfloat16, torch.float32)) -> torch.dtype:
        if self.device.type == "cpu":
            return torch.float32  # bf16 matmuls are slow and inexact on most CPUs
        return supported[0]

    def intermediate_device(self) -> torch.device:
        return torch.device("cpu")

    def module_dtype(self, kind: str) -> torch.dtype:
        """The dtype a text encoder or VAE is kept and run in."""
        return self.compute_dtype()

    def operations(self, kind: str):
        from ...model_defs.ops import StandaloneOps

        return StandaloneOps

    def manage(self, module: torch.nn.Module, kind: str, dtype: torch.dtype | None = None) -> Managed:
        return Managed(module, self.device, dtype or self.module_dtype(kind))

    def free_memory(self, device: torch.device) -> int:
        device = torch.device(device)
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return 8 << 30  # not Linux: assume a modest machine

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()

    def load_diffusion_model(self, model_file, weight_dtype: str = "default", attention_backend: str = "auto"):
        """Build the network with the standalone ops and assign the file's tensors (kept as stored unless
        a weight dtype is chosen; layers cast to the compute dtype at forward)."""
        from ...loaders.assign import assign_state_dict
        from ...loaders.quant.ops import quantized_ops
        from ...model_defs.ops import StandaloneOps

        spec = model_file.family
        compute = self.compute_dtype()
        storage = None if weight_dtype == "default" else WEIGHT_DTYPES[weight_dtype]
        ops = quantized_ops(StandaloneOps) if model_file.quantized else StandaloneOps
        network = spec.network_class(model_file.config, ops, dtype=compute, device="meta",
                                     attention_backend=attention_backend)
        assign_state_dict(network, model_file.state_dict, model_file.path, model_file.description, dtype=storage)
        network.eval().to(self.device)
        return StandaloneModel(network, spec, self.device, compute, model_file.path)

    def model_family(self, model) -> FamilySpec:
        if isinstance(model, StandaloneModel):
            return model.family
        raise TypeError(f"expected a model from MMDiTModelLoader, got {type(model).__name__}")

    def native_variant(self, model) -> None:
        return None  # every model here is the pack's own (its config says the variant)

    def loaded_network(self, model) -> tuple[torch.nn.Module, torch.device, torch.dtype]:
        """(network, device, compute dtype) of a MODEL, for a stage that runs its own loop (the refiner)."""
        return model.network, model.device, model.dtype

    def model_path(self, model) -> str:
        """The diffusion model's file (for messages)."""
        return model.path

    def network_config(self, model):
        """The diffusion network's config (widths the inputs must match)."""
        return model.network.config

    # --- sampling ------------------------------------------------------------------------------------
    def sampler_names(self) -> tuple[str, ...]:
        return SAMPLERS

    def scheduler_names(self) -> tuple[str, ...]:
        return SCHEDULERS

    def scheduler_sigmas(self, model, scheduler: str, steps: int) -> torch.Tensor:
        """The linear grid under the variant's constant shift (ComfyUI's ModelSampling* nodes, which
        change the shift inside ComfyUI, have no counterpart here)."""
        if scheduler != "simple":
            raise ValueError(f"scheduler {scheduler!r} needs ComfyUI; outside ComfyUI use 'official' or 'simple'")
        return shifted_sigmas(steps, self.model_family(model).sampling_for(model.network.config).shift)

    def progress(self, total: int, label: str = ""):
        return StderrProgress(total, label)

    def throw_if_interrupted(self) -> None:
        return None  # Ctrl-C interrupts the command line

    def sample(self, model: StandaloneModel, request) -> torch.Tensor:
        from .standalone_sampler import sample_euler

        if request.sampler_name not in SAMPLERS:
            raise ValueError(
                f"sampler {request.sampler_name!r} needs ComfyUI; outside ComfyUI only {', '.join(SAMPLERS)} runs"
            )
        return sample_euler(model, request, self.progress(len(request.sigmas) - 1, "sampling"))
