"""Run the pack inside a real ComfyUI: imported in-process, or as a server driven through its HTTP API.

ComfyUI is not on PyPI: the tests find a checkout through COMFYUI_PATH (tests/comfyui/README.md), and
skip when there is none. The checkout is used as it is; nothing of it is copied into this repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / ".cache" / "torchvision_shim"
PACK_FOLDER_NAME = "ComfyUI-MMDiT"
MODEL_FOLDERS = ("diffusion_models", "unet", "text_encoders", "clip", "vae", "loras")


def comfyui_path() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    return Path(path) if path and (Path(path) / "main.py").is_file() else None


def require_comfyui() -> Path:
    path = comfyui_path()
    if path is None:
        pytest.skip("ComfyUI integration: set COMFYUI_PATH to a ComfyUI checkout (see tests/comfyui/README.md)")
    if not (SHIM / "torchvision").is_dir():
        pytest.skip("ComfyUI integration: run tests/comfyui/setup_comfyui_env.sh first (torchvision shim missing)")
    return path


def import_comfy_inprocess() -> types.SimpleNamespace:
    """Import ComfyUI's modules into this process, on the CPU."""
    path = require_comfyui()
    for entry in (str(SHIM), str(path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    argv = sys.argv
    sys.argv = [argv[0]]  # comfy.cli_args parses the command line: keep pytest's out of it
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.model_base
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sample
        import comfy.samplers
        import comfy.sd
        import comfy.supported_models
        import folder_paths
        import nodes
    finally:
        sys.argv = argv
    return types.SimpleNamespace(comfy=comfy, folder_paths=folder_paths, nodes=nodes, path=path)


def write_tiny_models(folder_paths, models: Path, files: dict[str, str]) -> None:
    """Tiny random-weight Qwen-Image components at models/<folder>/<name>, registered as ComfyUI's folders."""
    from comfyui_mmdit.tools.tiny_models import write_tiny_component

    for folder, name in files.items():
        write_tiny_component(folder, models / folder / name)
        folder_paths.add_model_folder_path(folder, str(models / folder), is_default=True)


@contextlib.contextmanager
def pack_on_comfyui_host():
    """The pack's nodes with their host chosen afresh (ComfyUI is imported, so the ComfyUI host); the
    choice is reset afterwards so other tests pick their own."""
    from comfyui_mmdit.nodes import NODE_CLASS_MAPPINGS, host

    host.set_host(None)
    assert host.get_host().name == "comfyui"
    try:
        yield NODE_CLASS_MAPPINGS
    finally:
        host.set_host(None)


def network_forward(model, seed: int = 3):
    """One forward of a MODEL's network as it is held now (fully or partially loaded). Sampling would first
    call ComfyUI's load_models_gpu, which on a CPU-only machine loads every layer fully, so low-VRAM
    streaming is exercised by calling the network directly while a partial load is in place."""
    import torch

    g = torch.Generator().manual_seed(seed)
    network = model.model.diffusion_model
    channels = model.model.mmdit_family.latent_format.channels
    timestep = torch.tensor([0.7, 0.3]) * model.model.mmdit_family.timestep_scale
    latent = torch.randn(2, channels, 6, 10, generator=g)
    context = torch.randn(2, 7, network.config.context_dim, generator=g)
    with torch.no_grad():
        return network(latent, timestep, context)


def streamed_layers(model) -> list:
    """The layers ComfyUI left on the offload device, cast at use (low-VRAM partial loading)."""
    return [m for m in model.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]


@contextlib.contextmanager
def partially_loaded(model):
    """A clone of MODEL `model` with a quarter of its network's bytes loaded and the other layers streamed
    (cast at use), as ComfyUI's memory manager does when memory is short; unloaded on leaving."""
    import comfy.model_management
    import torch

    partial = model.clone()
    budget = comfy.model_management.module_size(partial.model.diffusion_model) // 4
    partial.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=budget, load_weights=True)
    try:
        assert partial.model.model_lowvram and streamed_layers(partial)
        yield partial
    finally:
        partial.unpatch_model(torch.device("cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server on 127.0.0.1 with the pack in custom_nodes/ and a private base directory.

    Put model files under `base_dir / "models"` before `start()`; `stop()` (or leaving the `with`
    block) ends the server and its children.
    """

    def __init__(self, startup_timeout: float = 180.0, front_end_root: Path | None = None):
        self.comfyui = require_comfyui()
        self.base_dir = Path(tempfile.mkdtemp(prefix="comfyui-mmdit-"))
        for sub in [f"models/{m}" for m in MODEL_FOLDERS] + ["custom_nodes", "input", "output", "temp", "user",
                                                              "frontend"]:
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO, target_is_directory=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        # The API needs no web UI; the browser tests pass the real frontend's static files.
        self.front_end_root = front_end_root or self.base_dir / "frontend"
        self.log_path = self.base_dir / "server.log"
        self.process = None

    def start(self) -> "ComfyServer":
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])))
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-auto-launch",
            "--front-end-root", str(self.front_end_root),
            "--database-url", "sqlite:///:memory:",
        ]
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=self.comfyui, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up:\n{self.log_tail()}")
            try:
                self.object_info()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        self.process = None
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the HTTP API --------------------------------------------------------------------------------
    def _request(self, path: str, payload=None, timeout: float = 30.0):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body.strip() else None

    def get_text(self, path: str, timeout: float = 10.0) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read().decode()

    def get_json(self, path: str, timeout: float = 30.0) -> tuple[int, dict]:
        """GET `path`: (HTTP status, the JSON answer), for errors too."""
        try:
            return 200, self._request(path, timeout=timeout)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def object_info(self) -> dict:
        return self._request("/object_info", timeout=10)

    def queue_prompt(self, workflow: dict) -> str:
        try:
            return self._request("/prompt", {"prompt": workflow, "client_id": "comfyui-mmdit-tests"})["prompt_id"]
        except urllib.error.HTTPError as e:  # validation errors come back as 400 with details
            raise RuntimeError(f"ComfyUI refused the workflow: {e.read().decode(errors='replace')}") from None

    def submit(self, workflow: dict) -> tuple[int, dict]:
        """POST /prompt and return (HTTP status, answer) whether ComfyUI accepts the workflow or not."""
        try:
            return 200, self._request("/prompt", {"prompt": workflow, "client_id": "comfyui-mmdit-tests"})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def history(self) -> dict:
        return self._request("/history")

    def interrupt(self) -> None:
        self._request("/interrupt", {})

    def wait_for(self, prompt_id: str, timeout: float = 300.0, allow_failure: bool = False) -> dict:
        """The history entry of a finished prompt; a failed one raises unless allow_failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self._request(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if allow_failure:
                    return entry
                if status.get("status_str") == "error" or not status.get("completed", True):
                    errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"workflow failed: {json.dumps(errors)[:3000]}\n{self.log_tail()}")
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running the workflow:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"workflow {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def outputs(self, entry: dict) -> list[Path]:
        """Image files a finished workflow saved."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for image in node_output.get("images", []):
                files.append(self.base_dir / "output" / image.get("subfolder", "") / image["filename"])
        return files
