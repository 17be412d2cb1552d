"""Check an API-format workflow completely before any node runs, and say every problem at once.

Reading the file: it exists, is JSON, is an object of nodes, is not the UI format. Each node: an object
with a known class_type and an inputs object. Each input: required ones present, none unknown, links to an
existing node's existing output of the type the input takes, widget values of the right type, inside
their range or list. No cycles. Then every node's VALIDATE_INPUTS (the loaders open and check their model
files there), as ComfyUI calls it when a prompt is queued. A problem is a line naming the node:
`node 7 (MMDiTVAELoader): ...`.
"""

from __future__ import annotations

import difflib
import inspect
import json
from pathlib import Path

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


class WorkflowError(ValueError):
    """A workflow that cannot run as written; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str], footer: str = ""):
        self.source = source
        self.problems = list(problems)
        head = (f"{source}: {problems[0]}" if len(problems) == 1
                else f"{source}: {len(problems)} problems, nothing was run:\n" + "\n".join(f"  {p}" for p in problems))
        super().__init__(head + (f"\n{footer}" if footer else ""))


# --- the file --------------------------------------------------------------------------------------------
def load_workflow(path) -> dict:
    """The workflow in an API-format JSON file, or a WorkflowError saying what the file is instead."""
    path = Path(path)
    if not path.exists():
        raise WorkflowError(str(path), ["no such file"])
    if path.is_dir():
        raise WorkflowError(str(path), ["is a folder, not a workflow file"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WorkflowError(str(path), ["is not a text file (a workflow is JSON text)"]) from None
    except json.JSONDecodeError as e:
        raise WorkflowError(str(path), [f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"]) from None
    return check_document(data, str(path))


def check_document(data, source: str) -> dict:
    if not isinstance(data, dict):
        raise WorkflowError(source, [f"holds a JSON {_json_kind(data)}; an API-format workflow is a JSON object "
                                     '{"node id": {"class_type": ..., "inputs": {...}}, ...}'])
    if "nodes" in data and "links" in data:
        twin = Path(source).parent / "api" / Path(source).name.replace(".json", ".api.json")
        twin = twin if twin.is_file() else "its API-format twin (.api.json)"
        raise WorkflowError(source, [f"is a UI-format workflow (what ComfyUI's canvas saves); the command line runs "
                                     f"the API format: use {twin} (each shipped workflow has one), or export "
                                     "it from ComfyUI with 'Export (API)'"])
    if not data:
        raise WorkflowError(source, ["holds no nodes"])
    return data


def _json_kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


# --- the nodes -------------------------------------------------------------------------------------------
def node_label(node_id: str, node) -> str:
    class_type = node.get("class_type") if isinstance(node, dict) else None
    return f"node {node_id} ({class_type})" if isinstance(class_type, str) else f"node {node_id}"


def structure_problems(workflow: dict, node_classes: dict) -> list[str]:
    """Problems with the nodes themselves: not objects, no class_type or inputs, unknown node types."""
    problems = []
    for node_id in sorted_ids(workflow):
        problems += _node_problems(node_id, workflow[node_id], node_classes)
    return problems


def _node_problems(node_id: str, node, node_classes: dict) -> list[str]:
    if not isinstance(node, dict):
        return [f"node {node_id}: is a JSON {_json_kind(node)}, not a node object with class_type and inputs"]
    class_type = node.get("class_type")
    problems = []
    if not isinstance(class_type, str) or not class_type:
        problems.append(f"node {node_id}: has no class_type (the node's type, e.g. 'MMDiTSampler')")
    elif class_type not in node_classes:
        close = difflib.get_close_matches(class_type, list(node_classes), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"node {node_id}: unknown node type {class_type!r}{hint}")
    if not isinstance(node.get("inputs"), dict):
        problems.append(f"{node_label(node_id, node)}: has no inputs object")
    return problems


def sorted_ids(workflow: dict) -> list[str]:
    return sorted(workflow, key=lambda i: (0, int(i), "") if str(i).isdigit() else (1, 0, str(i)))


def runnable(workflow: dict, node_classes: dict) -> dict:
    """The nodes that passed the structure checks."""
    return {node_id: node for node_id, node in workflow.items() if not _node_problems(node_id, node, node_classes)}


# --- the inputs ------------------------------------------------------------------------------------------
def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int) \
        and not isinstance(value[1], bool)


def input_specs(cls) -> tuple[dict, dict]:
    """(required, optional): {input name: (type, options)}."""
    declared = cls.INPUT_TYPES()
    return dict(declared.get("required", {})), dict(declared.get("optional", {}))


def input_problems(node_id: str, node: dict, workflow: dict, node_classes: dict) -> list[str]:
    """Missing, unknown, mislinked and out-of-range inputs of one node (known to pass the structure checks)."""
    cls = node_classes[node["class_type"]]
    label = node_label(node_id, node)
    required, optional = input_specs(cls)
    specs = {**required, **{name: spec for name, spec in optional.items() if name not in required}}
    own_check = validated_inputs(cls)
    problems = [f"{label}: required input {name!r} is missing" for name in required if name not in node["inputs"]]
    for name, value in node["inputs"].items():
        if name not in specs:
            problems.append(f"{label}: {_unknown_input(name, node['class_type'], specs)}")
            continue
        input_type, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
        if isinstance(value, list):
            problem = _link_problem(value, input_type, workflow, node_classes)
        else:
            problem = _value_problem(value, input_type, options, skip_list=name in own_check)
        if problem:
            problems.append(f"{label}: input {name!r}: {problem}")
    return problems


def _unknown_input(name: str, class_type: str, specs: dict) -> str:
    close = difflib.get_close_matches(name, list(specs), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown input {name!r}{hint}; {class_type} takes {', '.join(specs)}"


def _link_problem(value, input_type, workflow: dict, node_classes: dict) -> str | None:
    if not is_link(value):
        return f"{json.dumps(value)} is neither a value nor a link [\"node id\", output index]"
    source_id, index = value
    if source_id not in workflow:
        return f"links to node {source_id}, which is not in the workflow"
    source = workflow[source_id]
    if _node_problems(source_id, source, node_classes):
        return None  # reported with that node
    outputs = tuple(node_classes[source["class_type"]].RETURN_TYPES)
    if not 0 <= index < len(outputs):
        listed = ", ".join(f"{i}: {t}" for i, t in enumerate(outputs)) or "none"
        return (f"takes output {index} of {node_label(source_id, source)}, which has "
                f"{len(outputs)} output{'s' if len(outputs) != 1 else ''} ({listed})")
    if not types_match(outputs[index], input_type):
        return (f"takes {_type_name(input_type)}, but output {index} of {node_label(source_id, source)} "
                f"is {outputs[index]}")
    return None


def types_match(output_type, input_type) -> bool:
    """ComfyUI's rule: equal, '*' on either side, or sharing a member of a comma-separated list."""
    if isinstance(input_type, list):
        return output_type in ("*", "COMBO")
    if output_type == "*" or input_type == "*":
        return True
    return bool(set(str(output_type).split(",")) & set(str(input_type).split(",")))


def _type_name(input_type) -> str:
    return "a choice from a list" if isinstance(input_type, list) else str(input_type)


def _value_problem(value, input_type, options: dict, skip_list: bool = False) -> str | None:
    if isinstance(input_type, list):
        return None if skip_list else _choice_problem(value, input_type)
    if input_type not in WIDGET_TYPES:
        return f"takes a {input_type} from another node's output (a link [\"node id\", output index]), not a value"
    if not _has_type(value, input_type):
        return f"must be {_ARTICLE[input_type]}, got {json.dumps(value)}"
    if input_type in ("INT", "FLOAT"):
        if "min" in options and value < options["min"]:
            return f"{value} is below the minimum {options['min']}"
        if "max" in options and value > options["max"]:
            return f"{value} is above the maximum {options['max']}"
    return None


_ARTICLE = {"INT": "a whole number", "FLOAT": "a number", "STRING": "a string", "BOOLEAN": "true or false"}


def _has_type(value, input_type: str) -> bool:
    if isinstance(value, bool):
        return input_type == "BOOLEAN"
    if input_type == "INT":
        return isinstance(value, int)  # the runner passes values as they are: 2.0 steps would fail in range()
    if input_type == "FLOAT":
        return isinstance(value, (int, float))
    return isinstance(value, str) if input_type == "STRING" else False


def _choice_problem(value, choices: list) -> str | None:
    if value in choices:
        return None
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    if close:
        return f"{json.dumps(value)} is not one of the choices (did you mean {close[0]!r}?)"
    shown = ", ".join(repr(c) for c in choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"{json.dumps(value)} is not one of the choices: {shown}"


# --- the graph -------------------------------------------------------------------------------------------
def links_of(node: dict) -> list[str]:
    return [value[0] for value in node["inputs"].values() if is_link(value)]


def find_cycle(workflow: dict) -> list[str] | None:
    """One cycle of links, in the direction data flows (the first node repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        if node_id in path:
            return path[path.index(node_id):] + [node_id]
        if node_id in done or node_id not in workflow:
            return None
        path.append(node_id)
        for source_id in links_of(workflow[node_id]):
            cycle = visit(source_id)
            if cycle:
                return cycle
        path.pop()
        done.add(node_id)
        return None

    for node_id in sorted_ids(workflow):
        cycle = visit(node_id)
        if cycle:
            return cycle[::-1]
    return None


# --- the nodes' own checks -------------------------------------------------------------------------------
def validated_inputs(cls) -> list[str]:
    """The inputs a node's VALIDATE_INPUTS names (ComfyUI passes exactly those)."""
    method = getattr(cls, "VALIDATE_INPUTS", None)
    return [] if method is None else list(inspect.signature(method).parameters)


def own_check_problem(node_id: str, node: dict, node_classes: dict) -> str | None:
    cls = node_classes[node["class_type"]]
    names = validated_inputs(cls)
    if not names:
        return None
    values = {name: (None if is_link(node["inputs"].get(name)) else node["inputs"].get(name)) for name in names}
    result = cls.VALIDATE_INPUTS(**values)
    if result is True:
        return None
    return f"{node_label(node_id, node)}: {result if isinstance(result, str) else 'its inputs were refused'}"


# --- everything ------------------------------------------------------------------------------------------
def workflow_problems(workflow: dict, node_classes: dict, skip_own_checks=()) -> list[str]:
    """Every problem, in node order. The nodes' own (file) checks run for nodes with no other problem and
    not in `skip_own_checks` (nodes whose problem the caller reports itself)."""
    problems = structure_problems(workflow, node_classes)
    nodes = runnable(workflow, node_classes)
    troubled = set(skip_own_checks)
    for node_id in sorted_ids(nodes):
        found = input_problems(node_id, nodes[node_id], workflow, node_classes)
        if found:
            troubled.add(node_id)
            problems += found
    cycle = find_cycle(nodes)
    if cycle:
        problems.append("the links form a cycle: node " + " -> node ".join(cycle))
    for node_id in sorted_ids(nodes):
        if node_id not in troubled:
            problem = own_check_problem(node_id, nodes[node_id], node_classes)
            if problem:
                problems.append(problem)
    return problems


def check_workflow(workflow: dict, node_classes: dict, source: str = "the workflow") -> None:
    """Raise one WorkflowError listing every problem of `workflow`, or return when there is none."""
    raise_problems(workflow_problems(workflow, node_classes), node_classes, source)


def raise_problems(problems: list[str], node_classes: dict, source: str, notes=()) -> None:
    """Raise a WorkflowError for `problems` (if any), with `notes` and, for unknown node types, the list of
    what can run here below them."""
    if not problems:
        return
    notes = list(notes)
    if any("unknown node type" in p for p in problems):
        notes.append("The command line runs these node types: " + ", ".join(sorted(node_classes)) +
                     ". Other node types (ComfyUI's own, other packs') need ComfyUI.")
    raise WorkflowError(source, problems, "\n".join(notes))
