"""The command line's demo mode: which model files a workflow needs, which are present, and tiny
random-weight stand-ins for the missing ones (never for a present file, damaged or not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..nodes.common import NO_FILE


@dataclass(frozen=True)
class ModelFile:
    node_id: str
    folder: str  # the models folder kind: diffusion_models, text_encoders, vae
    name: str


@dataclass
class ModelFilePlan:
    present: list[tuple[ModelFile, Path]] = field(default_factory=list)
    missing: list[ModelFile] = field(default_factory=list)

    @property
    def needed(self) -> int:
        return len(self.present) + len(self.missing)


def model_file_inputs(workflow: dict, node_classes: dict) -> list[ModelFile]:
    """Every model file the workflow's loader nodes name (nodes the workflow check refuses are skipped)."""
    found = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        cls = node_classes.get(node.get("class_type"))
        for input_name, folder in getattr(cls, "FILE_INPUTS", {}).items():
            name = node["inputs"].get(input_name)
            if isinstance(name, str) and name != NO_FILE:
                found.append(ModelFile(node_id, folder, name))
    return found


def find_model_file(models_dir: Path, folder: str, name: str) -> Path | None:
    """The file (or model folder) under models_dir/<folder> or one of its aliases (unet, clip)."""
    from ..nodes.host.standalone import FOLDERS

    for sub in FOLDERS[folder]:
        candidate = Path(models_dir) / sub / name
        if candidate.exists():
            return candidate
    return None


def plan_model_files(workflow: dict, node_classes: dict, models_dir: Path) -> ModelFilePlan:
    plan = ModelFilePlan()
    for wanted in model_file_inputs(workflow, node_classes):
        path = find_model_file(models_dir, wanted.folder, wanted.name)
        if path is None:
            plan.missing.append(wanted)
        else:
            plan.present.append((wanted, path))
    return plan


def prepare_demo_models(workflow: dict, node_classes: dict, demo_dir: Path, only=None) -> Path:
    """Write tiny random-weight files under the names the workflow uses (only those in `only`, a list of
    ModelFile, when given), into demo_dir; returns demo_dir."""
    from .tiny_models import write_tiny_component

    wanted = model_file_inputs(workflow, node_classes) if only is None else only
    for model_file in wanted:
        target = Path(demo_dir) / model_file.folder / model_file.name
        if not target.exists():
            write_tiny_component(model_file.folder, target, workflow[model_file.node_id]["inputs"])
    return Path(demo_dir)


# --- input images ------------------------------------------------------------------------------------------
# Stand-in sizes by position among the workflow's images: small (a demo on the CPU), each a different
# shape, and not all whole 16-pixel cells (the native policy's centre crop runs too).
STAND_IN_SIZES = ((200, 136), (128, 128), (144, 184))


@dataclass(frozen=True)
class InputImage:
    node_id: str
    name: str  # relative to the input folder, as LoadImage names it


def input_images(workflow: dict) -> list[InputImage]:
    """Every image the workflow's LoadImage nodes name, in node order."""
    from ..nodes.host.workflow_check import sorted_ids

    found = []
    for node_id in sorted_ids(workflow):
        node = workflow[node_id]
        if isinstance(node, dict) and node.get("class_type") == "LoadImage" and isinstance(node.get("inputs"), dict):
            name = node["inputs"].get("image")
            if isinstance(name, str):
                found.append(InputImage(node_id, name))
    return found


def missing_input_images(workflow: dict, input_dir: Path) -> list[InputImage]:
    """The named images the input folder lacks and a stand-in can replace (a plain relative image path)."""
    from ..nodes.host.standalone import IMAGE_SUFFIXES

    missing = []
    for image in input_images(workflow):
        path = Path(image.name)
        replaceable = (image.name and not path.is_absolute() and ".." not in path.parts
                       and path.suffix.lower() in IMAGE_SUFFIXES)
        if replaceable and not (Path(input_dir) / path).is_file():
            missing.append(image)
    return missing


def stand_in_image(width: int, height: int, seed: int):
    """A small picture with structure (a colour ramp, a few flat shapes, fine stripes), drawn
    deterministically: something for the VAE and the vision tower to read, not a photograph."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 215, size=3)
    ramp = np.stack([base[c] + 40 * np.sin((x / width + y / height + c / 3) * np.pi) for c in range(3)], axis=-1)
    image = Image.fromarray(ramp.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, width * 3 // 4), rng.integers(0, height * 3 // 4)
        x1, y1 = x0 + rng.integers(width // 8, width // 3), y0 + rng.integers(height // 8, height // 3)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    for stripe in range(0, width, 6):
        draw.line((stripe, height - height // 8, stripe, height), fill=(20, 20, 20))
    return image


def write_stand_in_images(missing: list[InputImage], folder: Path, workflow: dict) -> Path:
    """A stand-in image under each missing name in `folder` (sized by its place among the workflow's
    images); returns folder."""
    order = [image.name for image in input_images(workflow)]
    for image in missing:
        target = Path(folder) / image.name
        if target.exists():
            continue
        index = order.index(image.name)
        width, height = STAND_IN_SIZES[index % len(STAND_IN_SIZES)]
        target.parent.mkdir(parents=True, exist_ok=True)
        stand_in_image(width, height, seed=index).convert("RGB").save(target)
    return Path(folder)
