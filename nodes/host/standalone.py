"""The standalone host: runs the pack's nodes without ComfyUI (tests, the command line).

It keeps to what a host must do and no more: pick a device, find model files in a models folder, show
progress on stderr, and sample with a flow-matching Euler loop. Everything a user would tune lives in
ComfyUI; here the choices are fixed and stated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...loaders.formats.torch_pickle import TORCH_PICKLE_SUFFIXES
from ...model_defs.families import FamilySpec
from ...model_defs.sampling import shifted_sigmas
from .progress import StderrProgress

MODEL_SUFFIXES = (".safetensors", ".sft", ".gguf") + TORCH_PICKLE_SUFFIXES
# ComfyUI's folder names, with the older aliases it also reads.
FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
}
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
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


def _default_device() -> torch.device:
    requested = os.environ.get("MMDIT_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class StandaloneHost:
    name = "standalone"

    def __init__(self, models_dir=None, device=None):
        self.models_dir = Path(models_dir or os.environ.get("MMDIT_MODELS_DIR", "models"))
        self.device = torch.device(device) if device is not None else _default_device()

    # --- files -------------------------------------------------------------------------------------
    def folder_files(self, kind: str) -> list[str]:
        names = []
        for folder in self._folders(kind):
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.name.lower().endswith(MODEL_SUFFIXES):
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

    def _folders(self, kind: str, existing: bool = True) -> list[Path]:
        folders = [self.models_dir / sub for sub in FOLDERS[kind]]
        return [f for f in folders if f.is_dir()] if existing else folders

    def tokenizer_dirs(self, name: str) -> list[Path]:
        """Folders that may hold a bundled tokenizer (a ComfyUI checkout ships the Qwen2.5 one)."""
        dirs = [self.models_dir / "text_encoders" / f"{name}_tokenizer"]
        comfyui = os.environ.get("COMFYUI_PATH")
        if comfyui:
            dirs.append(Path(comfyui) / "comfy" / "text_encoders" / f"{name}_tokenizer")
        return [d for d in dirs if d.is_dir()]

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

    # --- sampling ------------------------------------------------------------------------------------
    def sampler_names(self) -> tuple[str, ...]:
        return SAMPLERS

    def scheduler_names(self) -> tuple[str, ...]:
        return SCHEDULERS

    def scheduler_sigmas(self, scheduler: str, steps: int, shift: float) -> torch.Tensor:
        if scheduler != "simple":
            raise ValueError(f"scheduler {scheduler!r} needs ComfyUI; outside ComfyUI use 'family default' or 'simple'")
        return shifted_sigmas(steps, shift)

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
