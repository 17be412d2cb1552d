#!/usr/bin/env python3
"""Command line: run a shipped workflow headless with the pack's own nodes, without ComfyUI.

    python cli.py run workflows/qwen_image_t2i.api.json --models /path/to/ComfyUI/models
    python cli.py ui-workflows            # regenerate the UI-format twins of workflows/*.api.json
    python cli.py convert qwen_image_bf16.safetensors qwen_image-Q4_0.gguf --type Q4_0

With none of the workflow's model files present, `run` builds a tiny random-weight model set with the
real structure and runs the same workflow on it: that output is a pipeline check, not a picture.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _import_pack():
    """Register the repository as the package `comfyui_mmdit` without running the ComfyUI entry point."""
    if "comfyui_mmdit" not in sys.modules:
        package = types.ModuleType("comfyui_mmdit")
        package.__path__ = [str(ROOT)]
        package.__file__ = str(ROOT / "__init__.py")
        sys.modules["comfyui_mmdit"] = package
    import comfyui_mmdit.nodes as nodes

    return nodes


def run(args) -> int:
    nodes = _import_pack()
    from comfyui_mmdit.nodes.host import set_host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost
    from comfyui_mmdit.nodes.host.workflow_runner import load_workflow, run_workflow
    from comfyui_mmdit.tools.demo import missing_model_files, prepare_demo_models

    workflow = load_workflow(args.workflow)
    models = Path(args.models)
    missing, needed = missing_model_files(workflow, nodes.NODE_CLASS_MAPPINGS, models)
    demo = False
    if missing and (len(missing) == len(needed) or args.demo):
        demo = True
        models = prepare_demo_models(workflow, nodes.NODE_CLASS_MAPPINGS, Path(args.demo_dir))
        print("=" * 78)
        print("DEMO MODE: none of the workflow's model files were found in", args.models)
        print("Running the same workflow on a TINY RANDOM-WEIGHT model set with the real structure.")
        print("The image it writes is a PIPELINE CHECK, NOT A PICTURE (it will look like noise).")
        print("Put the real files in the models folder (see README) to generate a real image.")
        print("=" * 78)
    elif missing:
        print("missing model files (folder: file):", file=sys.stderr)
        for kind, name in missing:
            print(f"  models/{kind}/{name}", file=sys.stderr)
        print("Put them in place (see README), or pass --demo to run the tiny demo models.", file=sys.stderr)
        return 2

    set_host(StandaloneHost(models_dir=models, device=args.device))
    saved = run_workflow(workflow, nodes.NODE_CLASS_MAPPINGS, Path(args.output))
    for path in saved:
        print(("pipeline check (demo weights): " if demo else "saved: ") + str(path))
    return 0


def ui_workflows(args) -> int:
    nodes = _import_pack()
    import json

    from comfyui_mmdit.tools.workflow_ui import api_to_ui

    for path in sorted((ROOT / "workflows").glob("*.api.json")):
        ui = api_to_ui(json.loads(path.read_text()), nodes.NODE_CLASS_MAPPINGS)
        target = path.with_name(path.name.replace(".api.json", ".json"))
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


def convert(args) -> int:
    _import_pack()
    from comfyui_mmdit.loaders.errors import ModelFileError
    from comfyui_mmdit.tools.convert import convert as convert_file

    def progress(done, total):
        print(f"\r  {done}/{total} tensors", end="" if done < total else "\n", flush=True)

    target = Path(args.target)
    if target.exists() and not args.overwrite:
        print(f"{target} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        written = convert_file(args.source, target, args.type, progress=progress)
    except (ModelFileError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    print(f"wrote {written} ({written.stat().st_size / 2**30:.2f} GiB)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run an API-format workflow headless")
    run_parser.add_argument("workflow", help="an API-format workflow, e.g. workflows/qwen_image_t2i.api.json")
    run_parser.add_argument("--models", default=os.environ.get("MMDIT_MODELS_DIR", "models"),
                            help="a ComfyUI-style models folder (diffusion_models/, text_encoders/, vae/)")
    run_parser.add_argument("--output", default="output", help="where images are written")
    run_parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run_parser.add_argument("--demo", action="store_true", help="use the tiny demo models for missing files")
    run_parser.add_argument("--demo-dir", default=str(ROOT / "demo_models"), help=argparse.SUPPRESS)
    run_parser.set_defaults(func=run)
    ui_parser = commands.add_parser("ui-workflows", help="regenerate the UI-format workflows from the API ones")
    ui_parser.set_defaults(func=ui_workflows)
    _import_pack()
    from comfyui_mmdit.tools.convert import TYPES as convert_types

    convert_parser = commands.add_parser(
        "convert", help="quantize a bf16/fp16 diffusion model or text encoder to GGUF or scaled FP8",
        description="Norms, embeddings, the model-wide modulation and the final layer stay at full precision, "
                    "per-block modulation at 8 bits at least; the family is recorded in the file.")
    convert_parser.add_argument("source", help="a bf16/fp16 .safetensors file, sharded index or diffusers folder")
    convert_parser.add_argument("target", help="the output: .gguf for GGUF types, .safetensors for fp8_scaled")
    convert_parser.add_argument("--type", required=True, choices=convert_types, help="the quantization to write")
    convert_parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert_parser.set_defaults(func=convert)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
