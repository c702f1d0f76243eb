"""`openslip export MODEL --format timm|onnx|hf DIR`: a model for timm, ONNX runtimes or a Hugging Face-style folder
(docs/INTEROP.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model for timm, ONNX or as a Hugging Face-style folder",
        description=(
            "Export MODEL (a run directory, checkpoint, converted or OpenAI / open_clip weights: anything "
            "openslip.load_model reads) to DIR. timm: the vision tower in timm's names + config.json naming the timm "
            "model and its arguments. onnx: image_encoder.onnx and text_encoder.onnx (needs the onnx package; checked "
            "with onnxruntime when installed). hf: config.json + model.safetensors + preprocessor_config.json, "
            "which openslip.load_model(DIR) reads back. export writes only its own files: DIR may not be a run or "
            "checkpoint directory, inside one, or hold MODEL or any file the format does not write."
        ),
    )
    parser.add_argument("model", help="run directory, checkpoint directory or weights file")
    parser.add_argument("dir", help="directory to write (new, or an earlier export of the same format)")
    parser.add_argument("--format", required=True, choices=("timm", "onnx", "hf"), help="what to write")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier export of the same format in DIR: only that format's files are overwritten, "
        "nothing else is removed",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openslip.interop.export import export

    what = export(args.model, args.format, args.dir, overwrite=args.force)
    print(f"wrote {args.dir}: {what}")
    return 0
