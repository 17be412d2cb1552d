#!/usr/bin/env python3
"""Command line: run a shipped workflow headless with the pack's own nodes, without ComfyUI.

    python cli.py run workflows/api/qwen_image_t2i.api.json [--models /path/to/ComfyUI/models]
    python cli.py ui-workflows            # regenerate workflows/*.json from workflows/api/*.api.json
    python cli.py convert qwen_image_bf16.safetensors qwen_image-Q4_0.gguf --type Q4_0

`run` checks the whole workflow first (node types, links, values, and every model file it names, opened
and checked) and reports every problem at once before anything runs. With none of the workflow's model
files present it builds a tiny random-weight model set with the real structure and runs the same
workflow on it: that output is a pipeline check, not a picture.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RUN_EPILOG = """\
environment:
  MMDIT_MODELS_DIR  the models folder when --models is not given (default: models/ in this repository)
  MMDIT_DEVICE      the device when --device is not given
  COMFYUI_PATH      a ComfyUI checkout: its Qwen2.5 tokenizer (comfy/text_encoders/qwen25_tokenizer/) is
                    used for a text encoder that has no tokenizer beside it

tokenizers (never downloaded), searched in this order:
  beside the weights: <file stem>_tokenizer/ or tokenizer/ next to a single file, or a diffusers tokenizer/
  beside text_encoder/; then MODELS/text_encoders/qwen25_tokenizer/; then the one COMFYUI_PATH ships.
  The run says which one it used.

demo mode: --demo runs tiny random-weight stand-ins for the model files that are missing (real files that
are present are used, and a damaged one is an error, never replaced). With no model file present at all
the run is a demo by itself. Its images are a pipeline check, not a picture. In a demo, an input image a
LoadImage node names that the --input folder lacks is replaced by a small generated stand-in (said in the
banner), so the edit workflows run on a fresh clone.
"""


class UsageError(Exception):
    """Bad input to the command line itself (arguments, missing files): one message, no traceback."""


def _import_pack():
    """Register the repository as the package `comfyui_mmdit` without running the ComfyUI entry point."""
    if "comfyui_mmdit" not in sys.modules:
        package = types.ModuleType("comfyui_mmdit")
        package.__path__ = [str(ROOT)]
        package.__file__ = str(ROOT / "__init__.py")
        sys.modules["comfyui_mmdit"] = package
    import comfyui_mmdit.nodes as nodes

    return nodes


class _StderrHandler(logging.Handler):
    """The pack's log lines (which tokenizer, which sampler settings) on whatever stderr is now."""

    def emit(self, record):
        print(self.format(record), file=sys.stderr)


def _show_pack_log() -> None:
    logger = logging.getLogger("ComfyUI-MMDiT")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)


# --- run ---------------------------------------------------------------------------------------------------
def run(args) -> int:
    nodes = _import_pack()
    from comfyui_mmdit.nodes.host import set_host
    from comfyui_mmdit.nodes.host.standalone import StandaloneHost
    from comfyui_mmdit.nodes.host.workflow_check import load_workflow, structure_problems
    from comfyui_mmdit.nodes.host.workflow_runner import run_workflow, runnable_nodes
    from comfyui_mmdit.tools.demo import missing_input_images, plan_model_files

    device = _device(args.device)
    models = _models_folder(args.models)
    workflow = load_workflow(args.workflow)
    node_classes = runnable_nodes(nodes.NODE_CLASS_MAPPINGS)
    plan = plan_model_files(workflow, node_classes, models)
    inputs = Path(args.input).absolute()
    # A workflow with broken nodes gets its problems reported, not a demo run.
    sound = not structure_problems(workflow, node_classes)
    demo = bool(plan.missing) and (args.demo or not plan.present) and sound
    # Input images the input folder lacks get generated stand-ins in a demo (or with --demo).
    images = missing_input_images(workflow, inputs) if sound and (demo or args.demo) else []
    demo_dir = Path(args.demo_dir).absolute()
    roots, input_dirs = [models], [inputs]
    if demo:
        roots.append(_write_stand_ins(workflow, node_classes, plan, demo_dir))
    if images:
        input_dirs.append(_write_stand_in_images(workflow, images, demo_dir))
    set_host(StandaloneHost(models_dir=roots, device=device, input_dir=input_dirs))
    _check(workflow, node_classes, plan, demo, models, args.workflow, inputs)

    if demo or images:
        _print_demo_banner(plan if demo else None, models, demo_dir, images, inputs)
    elif args.demo:
        print("--demo: every model file and input image the workflow names is present, so nothing is replaced")
    _show_pack_log()
    saved = run_workflow(workflow, nodes.NODE_CLASS_MAPPINGS, Path(args.output), source=args.workflow, checked=True)
    _print_outputs(saved, demo, Path(args.output))
    return 0


def _check(workflow, node_classes, plan, demo: bool, models: Path, source: str, inputs: Path) -> None:
    """Every problem of the workflow at once, missing model files among them (unless stand-ins replace them)."""
    from comfyui_mmdit.nodes.host.workflow_check import node_label, raise_problems, workflow_problems
    from comfyui_mmdit.tools.demo import missing_input_images

    missing = [] if demo else plan.missing
    problems = workflow_problems(workflow, node_classes, skip_own_checks={f.node_id for f in missing})
    problems += [f"{node_label(f.node_id, workflow[f.node_id])}: the model file "
                 f"{models / f.folder / f.name} is missing" for f in missing]
    notes = [] if not missing else [
        "Put the missing model files in place (see README), or pass --demo to run tiny random-weight "
        "stand-ins for them (a pipeline check, not a picture)."]
    if problems and missing_input_images(workflow, inputs) and not demo:
        notes.append(f"LoadImage reads images from the input folder {inputs} (--input DIR); put the images there, or "
                     "pass --demo to run generated stand-ins for the missing ones.")
    raise_problems(problems, node_classes, source, notes)


def _device(requested):
    from comfyui_mmdit.nodes.host.standalone import resolve_device

    try:
        return resolve_device(requested)
    except ValueError as error:
        option = "--device" if requested else "MMDIT_DEVICE"
        raise UsageError(f"{option} {error}") from None


def _models_folder(models: str) -> Path:
    path = Path(models)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise UsageError(f"--models: the models folder {path.absolute()} {what}. Pass ComfyUI's models folder "
                         "(with diffusion_models/, text_encoders/, vae/); an empty folder runs the tiny demo models.")
    return path.absolute()  # messages then name files by full path


def _write_stand_ins(workflow, node_classes, plan, demo_dir: Path) -> Path:
    from comfyui_mmdit.tools.demo import prepare_demo_models

    return prepare_demo_models(workflow, node_classes, demo_dir, only=plan.missing)


def _write_stand_in_images(workflow, images, demo_dir: Path) -> Path:
    from comfyui_mmdit.tools.demo import write_stand_in_images

    return write_stand_in_images(images, demo_dir / "input", workflow)


def _print_demo_banner(plan, models: Path, demo_dir: Path, images=(), inputs: Path | None = None) -> None:
    """What demo mode replaced: model files (plan None: none) and input images."""
    print("=" * 78)
    if plan is None:
        print(f"DEMO MODE (--demo): every model file is present, but {len(images)} input image"
              f"{'s are' if len(images) > 1 else ' is'} missing from {inputs}")
    elif plan.present:
        print(f"DEMO MODE (--demo): {len(plan.missing)} of the workflow's {plan.needed} model files are missing "
              f"from {models}")
    else:
        print(f"DEMO MODE: none of the workflow's model files were found in {models}")
    if plan is not None:
        print("Tiny RANDOM-WEIGHT stand-ins with the real structure replace these files:")
        for f in plan.missing:
            print(f"  {f.folder}/{f.name}  (stand-in: {demo_dir / f.folder / f.name})")
        if plan.present:
            print("These real files are used as found:")
            for f, path in plan.present:
                print(f"  {f.folder}/{f.name}  ({path})")
            print("Stand-ins are tiny networks: a stand-in text encoder does not fit a full-size real diffusion "
                  "model (nor the reverse), and the sampler stops with an error saying so.")
    if images:
        print(f"GENERATED stand-in images (coloured shapes, not your pictures) replace the input images missing "
              f"from {inputs}:")
        for image in images:
            print(f"  {image.name}  (stand-in: {demo_dir / 'input' / image.name})")
    if plan is not None:
        print("The image it writes is a PIPELINE CHECK, NOT A PICTURE (it will look like noise).")
        print("Put the real files in the models folder (see README) to generate a real image.")
    if images:
        print(f"Put your own images in {inputs} (or pass --input DIR) under the names above to edit them.")
    print("=" * 78, flush=True)


def _print_outputs(saved: list[Path], demo: bool, output: Path) -> None:
    if not saved:
        print(f"the workflow wrote no images (it has no SaveImage or PreviewImage node); output folder: "
              f"{output.resolve()}")
    for path in saved:
        print(("pipeline check (demo weights): " if demo else "saved: ") + str(path.resolve()))


# --- ui-workflows ------------------------------------------------------------------------------------------
def ui_workflows(args) -> int:
    nodes = _import_pack()
    import json

    from comfyui_mmdit.tools.workflow_ui import api_to_ui, ui_twin

    for path in sorted((ROOT / "workflows" / "api").glob("*.api.json")):
        ui = api_to_ui(json.loads(path.read_text()), nodes.NODE_CLASS_MAPPINGS)
        target = ui_twin(path)
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


# --- convert -----------------------------------------------------------------------------------------------
def convert(args) -> int:
    _import_pack()
    from comfyui_mmdit.loaders.detection import TEXT_ENCODER
    from comfyui_mmdit.tools.convert import convert as convert_file, source_component

    def progress(done, total):
        print(f"\r  {done}/{total} tensors", end="" if done < total else "\n", flush=True)

    target = Path(args.target)
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    try:
        written = convert_file(args.source, target, args.type, progress=progress)
    except ValueError as error:  # a wrong type or output name; a ModelFileError is already one message
        raise UsageError(str(error)) from error
    print(f"wrote {written} ({written.stat().st_size / 2**30:.2f} GiB)")
    if source_component(args.source) == TEXT_ENCODER:
        _place_tokenizer(Path(args.source), written)
    return 0


def _place_tokenizer(source: Path, written: Path) -> None:
    from comfyui_mmdit.loaders.checkpoints import open_checkpoint
    from comfyui_mmdit.loaders.detection import TEXT_ENCODER, find_component
    from comfyui_mmdit.loaders.text_encoder import encoder_kind
    from comfyui_mmdit.loaders.tokenizers import places_beside
    from comfyui_mmdit.tools.convert import copy_tokenizer

    copy = copy_tokenizer(source, written)
    if copy is not None:
        print(f"copied the source's tokenizer to {copy} (the converted file finds it there)")
        return
    kind = encoder_kind(find_component(open_checkpoint(written), TEXT_ENCODER).family)
    if kind is not None and not kind.spec.needs_tokenizer_files:
        print(f"no tokenizer beside the source: the converted {kind.spec.display_name} uses the pack's built-in "
              "tokenizer")
        return
    looks = ", ".join(str(p.folder) for p in places_beside(written))
    print(f"no tokenizer beside {source}: the converted file will look for one in {looks}, then in the "
          "tokenizer ComfyUI ships (inside ComfyUI, or outside it through COMFYUI_PATH)")


# --- the command line --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true",
                        help="show the traceback of an error too (for debugging and bug reports)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", parents=[common], help="run an API-format workflow headless",
                                     epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_parser.add_argument("workflow", help="an API-format workflow, e.g. workflows/api/qwen_image_t2i.api.json")
    run_parser.add_argument("--models", default=os.environ.get("MMDIT_MODELS_DIR", str(ROOT / "models")),
                            help="a ComfyUI-style models folder (diffusion_models/, text_encoders/, vae/)")
    run_parser.add_argument("--output", default="output", help="where images are written")
    run_parser.add_argument("--input", default="input",
                            help="where LoadImage nodes find their images (ComfyUI's input/ folder; default input/)")
    run_parser.add_argument("--device", default=None,
                            help="cpu, cuda, cuda:N or mps (default: MMDIT_DEVICE, else cuda if available, else cpu)")
    run_parser.add_argument("--demo", action="store_true",
                            help="run tiny random-weight stand-ins for the model files that are missing (and "
                                 "generated stand-ins for missing input images)")
    run_parser.add_argument("--demo-dir", default=str(ROOT / "demo_models"), help=argparse.SUPPRESS)
    run_parser.set_defaults(func=run)
    ui_parser = commands.add_parser("ui-workflows", parents=[common],
                                    help="regenerate the UI-format workflows from the API ones")
    ui_parser.set_defaults(func=ui_workflows)
    _import_pack()
    from comfyui_mmdit.tools.convert import TYPES as convert_types

    convert_parser = commands.add_parser(
        "convert", parents=[common], help="quantize a bf16/fp16 diffusion model or text encoder to GGUF or scaled FP8 "
                                          "(or rewrite it as bf16 in the fused ComfyUI layout)",
        description="Norms, embeddings, the model-wide modulation and the final layer stay at full precision, "
                    "per-block modulation at 8 bits at least; the family is recorded in the file. Output names are "
                    "the ComfyUI layout whatever the source's (an official split-q/k/v file comes out fused). A text "
                    "encoder's tokenizer is copied beside the output as <output stem>_tokenizer/.")
    convert_parser.add_argument("source", help="a bf16/fp16 .safetensors file, sharded index or diffusers folder")
    convert_parser.add_argument("target", help="the output: .gguf for GGUF types, .safetensors for fp8_scaled and bf16")
    convert_parser.add_argument("--type", required=True, choices=convert_types,
                                help="the quantization to write (bf16: none, only the layout)")
    convert_parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert_parser.set_defaults(func=convert)
    return parser


def _clear_errors() -> tuple:
    """Errors that are the input's fault: reported as one message, without a traceback."""
    from comfyui_mmdit.loaders.errors import ModelFileError
    from comfyui_mmdit.nodes.host.workflow_check import WorkflowError
    from comfyui_mmdit.nodes.host.workflow_runner import NodeError

    return UsageError, WorkflowError, NodeError, ModelFileError


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    clear = _clear_errors()
    try:
        return args.func(args)
    except clear as error:
        if args.traceback:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("This is an internal error of ComfyUI-MMDiT, not a problem with your input: please report it "
              "with the traceback above.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
