"""`openslip embed --model MODEL --input FOLDER|MANIFEST|TEXT.txt --output X.npy|X.safetensors [--text]`.

Writes one L2-normalised embedding per image (or caption, with `--text`) in input order, plus
`X.ids.txt` naming the row of each (image path relative to the input, or the caption). Data-parallel
under torchrun like `openslip eval`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from openslip.errors import ConfigError, DataError


def register(sub: argparse._SubParsersAction) -> None:
    from openslip.commands._common import add_model_args

    p = sub.add_parser(
        "embed",
        help="write image or text embeddings of a folder / manifest to .npy or .safetensors",
        description="Embed every image under a folder (recursively) or listed in a manifest, or with --text every "
        "caption of a manifest / line of a .txt file. Example: `openslip embed --model runs/demo --input photos/ "
        "--output photos.npy`.",
    )
    add_model_args(p)
    p.add_argument("--input", required=True, help="image folder, CSV/TSV/JSONL manifest, or (--text) a .txt file")
    p.add_argument("--output", required=True, help="X.npy or X.safetensors (row ids go to X.ids.txt)")
    p.add_argument("--text", action="store_true", help="embed captions / text lines instead of images")
    p.add_argument(
        "--features",
        choices=("embed", "backbone"),
        default="embed",
        help="images: embed = the joint image-text space (default), backbone = the ViT's CLS feature",
    )
    p.add_argument("--no-normalize", action="store_true", help="keep the raw (not L2-normalised) embeddings")
    p.set_defaults(func=run)


def _images(spec: str, image_size: int, crop_fraction: float | None, inputs: Any) -> tuple[Any, list[str]]:
    from openslip.data.sources import open_source
    from openslip.eval.datasets import RecordImageSet
    from openslip.eval.preprocess import eval_transform

    source = open_source(spec)
    if not hasattr(source, "record"):
        raise DataError(f"{spec}: embed reads a folder or manifest, not tar shards")
    records = [source.record(i) for i in range(len(source))]
    ds = RecordImageSet(
        [r.image for r in records],
        name=Path(spec).name,
        classnames=[],
        templates=[],
        metric="top1",
        identity=f"embed:{spec}",
        transform=eval_transform("embed", image_size, crop_fraction, inputs),
    )
    return ds, [r.id for r in records]


def _texts(spec: str) -> list[str]:
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".txt" and path.is_file():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [line for line in lines if line]
    else:
        from openslip.data.skips import BadSample
        from openslip.data.sources import open_source

        source = open_source(spec)
        texts = []
        for i in range(len(source)):
            try:
                texts.extend(source.record(i).clean_captions())
            except BadSample:
                continue  # an image without a usable caption adds no text row
    if not texts:
        raise DataError(f"{spec}: no text to embed")
    return texts


def run(args: argparse.Namespace) -> int:
    from openslip import distributed
    from openslip.commands._common import setup
    from openslip.eval.features import encode_texts, extract_features, feature_fn
    from openslip.outputs import check_output_file

    out = Path(args.output).expanduser()
    if out.suffix.lower() not in (".npy", ".safetensors"):
        raise ConfigError(f"--output must end in .npy or .safetensors, got {out.name}")
    ids_path = out.with_name(out.stem + ".ids.txt")
    check_output_file(ids_path, option="--output's row ids", sources=[args.model, args.input])
    model, device = setup(args)  # checks --output itself
    normalize = not args.no_normalize
    if args.text:
        if not model.has_text:
            raise ConfigError(f"{model.cfg.name} is SimCLR-only: it has no text tower")
        ids = _texts(args.input)
        emb = encode_texts(model, ids, batch_size=args.batch_size, device=device, normalize=normalize)
    else:
        ds, ids = _images(args.input, args.image_size, args.crop_fraction, args.inputs)
        emb, _ = extract_features(
            feature_fn(model, args.features),
            ds,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            normalize=normalize,
            desc="embed",
        )
    if distributed.is_main():
        out.parent.mkdir(parents=True, exist_ok=True)
        array = emb.float().contiguous()
        if out.suffix.lower() == ".npy":
            np.save(out, array.numpy())
        else:
            from safetensors.torch import save_file

            kind = "text" if args.text else args.features
            save_file({"embeddings": array}, str(out), {"model": model.cfg.name, "kind": kind, "rows": str(len(ids))})
        ids_path.write_text("".join(i.replace("\n", " ") + "\n" for i in ids), encoding="utf-8")
        what = "texts" if args.text else "images"
        print(f"wrote {out}: {array.shape[0]} {what} x {array.shape[1]} dims; row ids in {ids_path}")
    distributed.barrier()
    distributed.destroy_distributed()
    return 0
