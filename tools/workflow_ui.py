"""Turn an API-format workflow into the UI format ComfyUI's frontend opens (and read widgets back).

The shipped workflows are written once, in API format (workflows/api/NAME.api.json); their UI twins
(workflows/NAME.json, the folder ComfyUI offers as templates) are generated from them with the nodes'
INPUT_TYPES (`python cli.py ui-workflows`), so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path

from ..nodes.host.workflow_check import WIDGET_TYPES
from ..nodes.host.workflow_runner import CORE_NODES

def ui_twin(api_path) -> Path:
    """workflows/api/NAME.api.json -> workflows/NAME.json"""
    api_path = Path(api_path)
    return api_path.parent.parent / api_path.name.replace(".api.json", ".json")


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def node_signature(class_type: str, node_classes: dict) -> tuple[dict, list[str]]:
    """(ordered inputs {name: spec}, output types) of a node class: the pack's, or one of the core output
    nodes the shipped workflows end in."""
    cls = node_classes.get(class_type) or CORE_NODES.get(class_type)
    if cls is None:
        raise KeyError(f"unknown node type {class_type}")
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}, list(cls.RETURN_TYPES)


def has_seed_control(name: str, spec) -> bool:
    """Whether the frontend puts a control_after_generate widget beside this widget: when its options say so,
    and for an INT named seed or noise_seed unless its options say otherwise (the frontend's legacy rule,
    in 1.27 and 1.35 alike)."""
    options = spec[1] if len(spec) > 1 else {}
    default = spec[0] == "INT" and name in ("seed", "noise_seed")
    return bool(options.get("control_after_generate", default))


def extra_widget_values(spec, name: str = "") -> list:
    """The values the frontend stores right after a widget's own, for the widgets it adds beside it: a seed
    widget with a control (has_seed_control) carries its control mode ("fixed"), a file list with image_upload
    (LoadImage) is followed by its upload button, whose value is "image"."""
    options = spec[1] if len(spec) > 1 else {}
    return (["fixed"] if has_seed_control(name, spec) else []) + (
        ["image"] if options.get("image_upload") else [])


def is_link(value) -> bool:
    return isinstance(value, list)


def linked_widget_value(spec):
    """What a widget whose input is linked keeps in widgets_values (the frontend keeps the widget, greyed
    out, and sends the link instead): its default, an empty text for a STRING without one."""
    options = spec[1] if len(spec) > 1 else {}
    return options.get("default", "" if spec[0] == "STRING" else None)


def widget_values(inputs: dict, values: dict) -> list:
    """The frontend's widgets_values: widget inputs in declaration order, each followed by the values of the
    widgets the frontend adds beside it (extra_widget_values). A widget fed by a link keeps its default."""
    out = []
    for name, spec in inputs.items():
        if not is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 else {}
        value = values[name] if name in values else options.get("default")
        out.append(linked_widget_value(spec) if is_link(value) else value)
        out += extra_widget_values(spec, name)
    return out


def node_size(inputs: dict) -> list[int]:
    """A node's size on the canvas: a row per input, and room for the preview under an image-upload widget."""
    uploads = any(len(spec) > 1 and spec[1].get("image_upload") for spec in inputs.values() if is_widget(spec))
    return [340, 120 + 26 * len(inputs) + (200 if uploads else 0)]


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id):
        if node_id not in depth:
            links = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(src) for src in links), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def api_to_ui(api: dict, node_classes: dict) -> dict:
    depth = _depths(api)
    rows: dict[int, int] = {}  # column -> the top of its next node
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                source, slot = value
                _, source_outputs = node_signature(api[source]["class_type"], node_classes)
                links.append([link_id, int(source), slot, int(node_id), None, source_outputs[slot]])
                outputs.setdefault((source, slot), []).append(link_id)

    order = sorted(api, key=lambda n: (depth[n], int(n)))
    for position, node_id in enumerate(order):
        node = api[node_id]
        inputs, output_types = node_signature(node["class_type"], node_classes)
        link_inputs = []
        # The frontend's slot order: the sockets in declaration order, then the widgets' own (of which only
        # those fed by a link are written; the frontend adds the others itself).
        socket_names = [name for name, spec in inputs.items() if not is_widget(spec)]
        linked_widgets = [name for name, spec in inputs.items() if is_widget(spec) and is_link(node["inputs"].get(name))]
        for name in socket_names + linked_widgets:
            spec, value = inputs[name], node["inputs"].get(name)
            link_id = None
            if is_link(value):
                link_id = next(l[0] for l in links if l[3] == int(node_id) and l[4] is None and
                               l[1] == int(value[0]) and l[2] == value[1])
                next(l for l in links if l[0] == link_id)[4] = len(link_inputs)
            slot = {"name": name, "type": spec[0], "link": link_id}
            if is_widget(spec):  # a widget fed by a link (a prompt from another node): the frontend's form
                slot["widget"] = {"name": name}
            link_inputs.append(slot)
        column = depth[node_id]
        size = node_size(inputs)
        top = rows.get(column, 40)
        rows[column] = top + max(300, size[1] + 40)
        nodes.append({
            "id": int(node_id),
            "type": node["class_type"],
            "pos": [40 + 380 * column, top],
            "size": size,
            "flags": {},
            "order": position,
            "mode": 0,
            "inputs": link_inputs,
            "outputs": [{"name": t, "type": t, "links": outputs.get((node_id, i), []), "slot_index": i}
                        for i, t in enumerate(output_types)],
            "title": node.get("_meta", {}).get("title", node["class_type"]),
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widget_values(inputs, node["inputs"]),
        })
    return {
        "last_node_id": max(int(n) for n in api),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }
