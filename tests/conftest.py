"""Test set-up: the repository root is the node pack; it is imported as the package `comfyui_mmdit`
(the name ComfyUI would give it is derived from its folder, which need not be a valid identifier)."""

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle torch threads busy-wait otherwise

ROOT = Path(__file__).resolve().parents[1]
if "comfyui_mmdit" not in sys.modules:
    package = types.ModuleType("comfyui_mmdit")
    package.__path__ = [str(ROOT)]  # subpackages import without running the ComfyUI entry point
    package.__file__ = str(ROOT / "__init__.py")
    sys.modules["comfyui_mmdit"] = package


import pytest  # noqa: E402

# Tests that need a ComfyUI checkout (and, for the browser tests, its web frontend): skipped without one, but
# in CI (CI=true), where .ci/run provides them, a skip there is a failure: CI must never pass without them.
MUST_RUN_IN_CI = ("comfyui", "browser")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and running_in_ci() and not hasattr(report, "wasxfail")
            and any(part in MUST_RUN_IN_CI for part in item.path.relative_to(ROOT / "tests").parts[:1])):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where this test must run: {reason}"


@pytest.fixture(autouse=True)
def standalone_host_outside_comfyui_tests(request):
    """Tests outside tests/comfyui run on the standalone host even after ComfyUI was imported in-process
    by the ComfyUI tests (the host is chosen once per process, by whether ComfyUI is loaded)."""
    if "comfyui" in request.node.path.parts:
        yield
        return
    from comfyui_mmdit.nodes import host

    previous = host._host
    if host.running_in_comfyui() and getattr(previous, "name", None) != "standalone":
        host.set_host(None)
        original = host.running_in_comfyui
        host.running_in_comfyui = lambda: False
        try:
            yield
        finally:
            host.running_in_comfyui = original
            host.set_host(previous)
    else:
        yield
