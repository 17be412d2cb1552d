"""Run an API-format ComfyUI workflow with the pack's nodes, without ComfyUI.

API format: {node_id: {"class_type": ..., "inputs": {name: value | [source_id, output_index]}}}. The whole
workflow is checked first (workflow_check: types, links, values, and every loader's model file), so a bad
input is reported before anything runs. Nodes then run once each, in dependency order. Besides the
pack's nodes, the core nodes the shipped workflows use are provided here: the output nodes they end in
(SaveImage, PreviewImage: they write PNG files; PreviewAny: its text is printed), LoadImage (images from
the host's input folder, as ComfyUI loads them) and PrimitiveStringMultiline (one prompt feeding several
nodes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .workflow_check import check_workflow, is_link, node_label


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


class CoreSaveImage:
    """ComfyUI's SaveImage as the workflow check sees it (the runner writes the files itself)."""

    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}


class CorePreviewImage(CoreSaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}


class CoreLoadImage:
    """ComfyUI's LoadImage: an image from the input folder as IMAGE [1, H, W, 3] (RGB, 0..1) and MASK (1 where
    the image is transparent; a 64x64 zero mask when it has no alpha). Orientation from EXIF is applied and
    frames of an animated file of the first frame's size are stacked, as ComfyUI does."""

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from . import get_host

        files = get_host().input_files() or ["(no images in the input folder)"]
        return {"required": {"image": (files, {"image_upload": True})}}

    def load(self, image: str):
        from PIL import Image, ImageOps, ImageSequence

        from . import get_host

        path = get_host().input_path(image)
        images, masks = [], []
        with Image.open(path) as source:
            for frame in ImageSequence.Iterator(source):
                frame = ImageOps.exif_transpose(frame)
                if frame.mode == "I":  # 16-bit greyscale
                    frame = frame.point(lambda value: value * (1 / 255))
                rgb = frame.convert("RGB")
                if images and rgb.size != (images[0].shape[1], images[0].shape[0]):
                    continue
                images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0))
                masks.append(_transparency(frame))
        return torch.stack(images), torch.stack(masks)


def _transparency(frame) -> torch.Tensor:
    if "A" in frame.getbands():
        alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
    else:
        return torch.zeros((64, 64), dtype=torch.float32)
    return 1.0 - torch.from_numpy(alpha)


class CorePrimitiveStringMultiline:
    """ComfyUI's "String (Multiline)" primitive (comfy_extras/nodes_primitive.py, in 0.3.64 and 0.8.0): a text
    typed once and linked to every node that reads it (MMDiT Text Encode and MMDiT Refiner's prompt)."""

    RETURN_TYPES = ("STRING",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"multiline": True})}}

    def execute(self, value: str):
        return (value,)


class CorePreviewAny:
    """ComfyUI's PreviewAny ("Preview Any" / "Preview as Text", comfy_extras/nodes_preview_any.py): shows any
    value as text. The command line prints it (preview_text: ComfyUI's rendering of the value)."""

    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}


def preview_text(value) -> str:
    """The text PreviewAny shows for a value: a string as it is, a number or boolean as str(), else JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    if value is None:
        return "None"
    try:
        return json.dumps(value, indent=4)
    except (TypeError, ValueError):
        return str(value)


CORE_NODES = {"SaveImage": CoreSaveImage, "PreviewImage": CorePreviewImage, "LoadImage": CoreLoadImage,
              "PrimitiveStringMultiline": CorePrimitiveStringMultiline, "PreviewAny": CorePreviewAny}
OUTPUT_NODES = ("SaveImage", "PreviewImage")
TEXT_OUTPUT_NODES = ("PreviewAny",)


class NodeError(ValueError):
    """A node refused its inputs while running (a ValueError it raised, e.g. a model file it could not use)."""

    def __init__(self, node_id: str, node: dict, error: Exception):
        self.node_id = node_id
        self.error = error
        super().__init__(f"{node_label(node_id, node)}: {error}")


def runnable_nodes(node_classes: dict) -> dict:
    """The node types the runner can execute: the pack's and the core output nodes."""
    return {**node_classes, **CORE_NODES}


def execution_order(workflow: dict) -> list[str]:
    """Node ids with every node after the nodes it takes inputs from (the workflow is checked: no cycles)."""
    order, done = [], set()

    def visit(node_id: str):
        if node_id in done:
            return
        done.add(node_id)
        for value in workflow[node_id]["inputs"].values():
            if is_link(value):
                visit(value[0])
        order.append(node_id)

    for node_id in workflow:
        visit(node_id)
    return order


def print_text(label: str, text: str) -> None:
    """How the command line shows a PreviewAny's text: its node and title, then the text (or "(empty)")."""
    print(f"{label}: {text}" if text.strip() else f"{label}: (empty)", flush=True)


def run_workflow(workflow: dict, node_classes: dict, output_dir, source: str = "the workflow",
                 checked: bool = False, on_text=print_text) -> list[Path]:
    """Check the whole workflow (unless the caller just did), then execute every node; returns the image
    files output nodes wrote. A PreviewAny's text goes to on_text(label, text)."""
    if not checked:
        check_workflow(workflow, runnable_nodes(node_classes), source)
    saver = SaveImage(output_dir)
    results: dict[str, tuple] = {}
    for node_id in execution_order(workflow):
        node = workflow[node_id]
        inputs = {name: (results[value[0]][value[1]] if is_link(value) else value)
                  for name, value in node["inputs"].items()}
        if node["class_type"] in TEXT_OUTPUT_NODES:
            meta = node.get("_meta")
            title = meta.get("title") if isinstance(meta, dict) else None
            on_text(node_label(node_id, node) + (f" {title!r}" if title else ""), preview_text(inputs.get("source")))
            results[node_id] = ()
            continue
        try:
            results[node_id] = _run_node(node["class_type"], inputs, node_classes, saver)
        except (ValueError, FileNotFoundError) as error:
            raise NodeError(node_id, node, error) from error
    return saver.saved


def _run_node(class_type: str, inputs: dict, node_classes: dict, saver: SaveImage) -> tuple:
    if class_type in OUTPUT_NODES:
        saver.save(inputs["images"], inputs.get("filename_prefix", class_type))
        return ()
    cls = node_classes.get(class_type) or CORE_NODES[class_type]
    return getattr(cls(), cls.FUNCTION)(**inputs)
