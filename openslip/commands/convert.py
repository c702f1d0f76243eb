"""`openslip convert SRC DST`: an original SLIP `.pt` checkpoint (or a bare state dict, or any checkpoint
`openslip.load_model` reads) to an openslip checkpoint directory (model.safetensors + config.json)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original SLIP .pt checkpoint or OpenAI / open_clip weights to the openslip format",
        description=(
            "Convert SRC (an original SLIP .pt checkpoint, an OpenAI CLIP or open_clip ViT state dict, a "
            "torch.save'd state dict, an openslip checkpoint or run directory) to an openslip checkpoint "
            "directory DST holding model.safetensors and config.json. "
            "Files are read as data only (torch.load weights_only=True); nothing in them is executed."
        ),
    )
    parser.add_argument("src", help="checkpoint file or directory to read")
    parser.add_argument("dst", help="checkpoint directory to write (new, or an earlier convert output)")
    parser.add_argument(
        "--model",
        metavar="NAME",
        default=None,
        help="model name for a bare state dict that does not record it (e.g. slip_vit_b16 or SLIP_VITB16)",
    )
    parser.add_argument(
        "--activation",
        choices=("gelu", "quick_gelu"),
        default=None,
        help="MLP activation of an open_clip state dict (not recorded in it): quick_gelu for OpenAI weights and "
        "'-quickgelu' models, gelu for other open_clip models; OpenAI's own files are recognised",
    )
    parser.add_argument(
        "--head-width",
        type=int,
        default=None,
        metavar="N",
        help="attention head width of a CLIP state dict, heads = width / N (default 64, as OpenAI and open_clip)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier convert output in DST: only its model.safetensors, config.json and checksums.json "
        "are overwritten (a run, another checkpoint or a folder holding other files is refused)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from openslip.weights.checkpoint import convert, load_checkpoint_config

    dst = convert(
        args.src,
        args.dst,
        model_name=args.model,
        overwrite=args.force,
        activation=args.activation,
        head_width=args.head_width,
    )
    name = load_checkpoint_config(dst)["model"]["name"]
    files = ", ".join(f"{f.name} ({_size(f)})" for f in sorted(Path(dst).iterdir()))
    print(f"wrote {dst}: model {name}; {files}")
    return 0


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
