"""ComfyUI's own custom-node loader imports the pack from its folder and registers every node."""

import asyncio
import inspect

from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS

from comfy_harness import REPO


def test_comfyui_imports_the_pack(comfy_inprocess):
    comfy_nodes = comfy_inprocess.nodes
    result = comfy_nodes.load_custom_node(str(REPO))
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    assert result is True
    for name in NODE_CLASS_MAPPINGS:
        assert name in comfy_nodes.NODE_CLASS_MAPPINGS, name
