"""Run an API-format ComfyUI workflow with the pack's nodes, without ComfyUI.

API format: {node_id: {"class_type": ..., "inputs": {name: value | [source_id, output_index]}}}. Nodes run
once each, in dependency order. Besides the pack's nodes, the two core output nodes the shipped workflows
end in (SaveImage, PreviewImage) are provided here: they write PNG files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class SaveImage:
    """Writes IMAGE batches ([B, H, W, 3] floats in 0..1) as numbered PNG files."""

    def __init__(self, output_dir: Path, temporary: bool = False):
        self.output_dir = Path(output_dir)
        self.temporary = temporary
        self.saved: list[Path] = []

    def save(self, images: torch.Tensor, filename_prefix: str = "ComfyUI") -> list[Path]:
        from PIL import Image

        target = self.output_dir / filename_prefix
        target.parent.mkdir(parents=True, exist_ok=True)
        existing = len(list(target.parent.glob(f"{target.name}_*.png")))
        paths = []
        for i, image in enumerate(images):
            array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            path = target.parent / f"{target.name}_{existing + i + 1:05d}_.png"
            Image.fromarray(np.ascontiguousarray(array)).save(path)
            paths.append(path)
        self.saved.extend(paths)
        return paths


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def execution_order(workflow: dict) -> list[str]:
    order, state = [], {}

    def visit(node_id: str, chain: tuple):
        if state.get(node_id) == "done":
            return
        if node_id in chain:
            raise ValueError(f"the workflow has a cycle through node {node_id}")
        if node_id not in workflow:
            raise ValueError(f"a link points at node {node_id}, which is not in the workflow")
        for value in workflow[node_id]["inputs"].values():
            if _is_link(value):
                visit(value[0], chain + (node_id,))
        state[node_id] = "done"
        order.append(node_id)

    for node_id in workflow:
        visit(node_id, ())
    return order


def run_workflow(workflow: dict, node_classes: dict, output_dir) -> list[Path]:
    """Execute every node; returns the image files written by output nodes."""
    saver = SaveImage(output_dir)
    results: dict[str, tuple] = {}
    for node_id in execution_order(workflow):
        node = workflow[node_id]
        class_type = node["class_type"]
        inputs = {name: (results[value[0]][value[1]] if _is_link(value) else value)
                  for name, value in node["inputs"].items()}
        if class_type in ("SaveImage", "PreviewImage"):
            saver.save(inputs["images"], inputs.get("filename_prefix", class_type))
            results[node_id] = ()
            continue
        if class_type not in node_classes:
            raise ValueError(f"node {node_id} is a {class_type}, which only ComfyUI can run "
                             f"(the command line runs: {', '.join(sorted(node_classes))}, SaveImage, PreviewImage)")
        cls = node_classes[class_type]
        results[node_id] = getattr(cls(), cls.FUNCTION)(**inputs)
    return saver.saved


def load_workflow(path) -> dict:
    data = json.loads(Path(path).read_text())
    if "nodes" in data and "links" in data:
        raise ValueError(f"{path} is a UI-format workflow; the command line runs the API format "
                         "(the *.api.json twin of each shipped workflow)")
    return data
