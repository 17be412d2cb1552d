"""The pack's HTTP routes on ComfyUI's server, for its editor extension (web/mmdit.js).

GET /mmdit/sampling_defaults?model_name=NAME -> the official steps and guidance of the model in that file
(its family and variant read from the file), so picking a model in MMDiT Load Diffusion Model can prefill
the MMDiT Sampler it feeds. An unreadable file answers 400 with the loader's message.
"""

from __future__ import annotations


def register_routes() -> None:
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # not inside ComfyUI's server (tests importing ComfyUI in-process, the command line)
        return
    if getattr(PromptServer, "instance", None) is None:
        return

    @PromptServer.instance.routes.get("/mmdit/sampling_defaults")
    async def sampling_defaults_route(request):
        from ...loaders.errors import ModelFileError
        from ..model_loader import sampling_defaults

        name = request.query.get("model_name", "")
        try:
            return web.json_response(sampling_defaults(name))
        except (ModelFileError, FileNotFoundError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
