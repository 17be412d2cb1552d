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
