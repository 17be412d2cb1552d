"""The command line's demo mode: which model files a workflow needs, and tiny stand-ins for them."""

from __future__ import annotations

from pathlib import Path


def model_file_inputs(workflow: dict, node_classes: dict) -> list[tuple[str, str, str]]:
    """(node id, models folder, file name) for every model file the workflow's loader nodes name."""
    found = []
    for node_id, node in workflow.items():
        cls = node_classes.get(node["class_type"])
        for input_name, folder in getattr(cls, "FILE_INPUTS", {}).items():
            found.append((node_id, folder, node["inputs"][input_name]))
    return found


def missing_model_files(workflow: dict, node_classes: dict, models_dir: Path):
    """(missing, needed): lists of (folder, name); a folder alias (unet, clip) counts as the folder."""
    from ..nodes.host.standalone import FOLDERS

    needed = [(folder, name) for _, folder, name in model_file_inputs(workflow, node_classes)]
    missing = [(folder, name) for folder, name in needed
               if not any((Path(models_dir) / sub / name).exists() for sub in FOLDERS[folder])]
    return missing, needed


def prepare_demo_models(workflow: dict, node_classes: dict, demo_dir: Path) -> Path:
    """Write tiny random-weight files under the names the workflow uses; returns the models folder."""
    from .tiny_models import write_tiny_component

    models = Path(demo_dir)
    for node_id, folder, name in model_file_inputs(workflow, node_classes):
        target = models / folder / name
        if not target.exists():
            write_tiny_component(folder, target, workflow[node_id]["inputs"])
    return models
