"""`openslip export MODEL --format timm|onnx|open_clip|hf|openslip DIR`: a model for timm, ONNX runtimes, open_clip
(CLIP_benchmark), transformers' CLIPModel, or an openslip folder with its preprocessing (docs/INTEROP.md)."""

from __future__ import annotations

import argparse
import sys

# openslip.interop.export.FORMATS, spelled here so that `openslip --help` does not import torch
FORMATS = ("timm", "onnx", "open_clip", "hf", "openslip")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model for timm, ONNX, open_clip, transformers or as an openslip folder",
        description=(
            "Export MODEL (a run directory, checkpoint, converted or OpenAI / open_clip weights: anything "
            "openslip.load_model reads) to DIR. timm: the vision tower in timm's names + config.json naming the timm "
            "model and its arguments. onnx: image_encoder.onnx and text_encoder.onnx (needs the onnx package; checked "
            "with onnxruntime when installed). open_clip: open_clip_config.json + open_clip_model.safetensors, which "
            "open_clip.create_model_and_transforms('local-dir:DIR') loads (and so CLIP_benchmark). hf: a transformers "
            "CLIPModel folder (config.json + model.safetensors + preprocessor_config.json). open_clip and hf hold the "
            "CLIP part only and refuse, in one line, a model they cannot reproduce exactly. openslip: config.json + "
            "model.safetensors + preprocessor_config.json, which openslip.load_model(DIR) reads back bit-exactly. "
            "export writes only its own files: DIR may not be a run or checkpoint directory, inside one, or hold MODEL "
            "or any file the format does not write."
        ),
    )
    parser.add_argument("model", help="run directory, checkpoint directory or weights file")
    parser.add_argument("dir", help="directory to write (new, or an earlier export of the same format)")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        metavar="FORMAT",  # the usage line stays one line; a wrong value lists the choices
        help=f"what to write: {', '.join(FORMATS)}",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier export of the same format in DIR: only that format's files are overwritten, "
        "nothing else is removed",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openslip.interop.export import export

    what, lost = export(args.model, args.format, args.dir, overwrite=args.force)
    for line in lost:
        print(f"openslip export: warning: {line}", file=sys.stderr)
    print(f"wrote {args.dir}: {what}")
    return 0
