"""`openslip export MODEL --format timm|onnx|hf DIR`: hand a model to timm, ONNX runtimes or a Hugging Face-style
folder. Each writer fills a new folder and returns a line to print; `export` checks the target first, then moves
the files in one by one (`openslip.outputs`: an export writes only its own files)."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openslip.errors import ConfigError, UserError
from openslip.interop.timm_layout import timm_config, timm_state_dict
from openslip.interop.transforms import preprocess_of
from openslip.models import SLIP
from openslip.outputs import check_output_dir
from openslip.weights.atomic import move_files_into, staging_dir
from openslip.weights.checkpoint import CHECKSUM_FILE, load_model, save_checkpoint
from openslip.weights.safe_load import read_json

FORMATS = ("timm", "onnx", "hf")
PREPROCESSOR_FILE = "preprocessor_config.json"


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def export_timm(model: SLIP, out: Path, preprocess: dict[str, Any]) -> str:
    """model.safetensors (the vision tower, timm names) + config.json (timm name, model_args, pretrained_cfg)."""
    from safetensors.torch import save_file

    cfg = timm_config(model.cfg.vision, preprocess)
    out.mkdir(parents=True, exist_ok=True)
    save_file(timm_state_dict(model.visual), str(out / "model.safetensors"))
    _write_json(out / "config.json", cfg)
    exact = "" if cfg["exact_name"] else " with config.json's model_args"
    return f"timm {cfg['architecture']}{exact}"


class ImageEncoder(nn.Module):
    """[B, 3, S, S] normalised images -> [B, embed_dim] (CLIP / SLIP) or [B, width] ViT features (SimCLR)."""

    def __init__(self, model: SLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image) if self.model.has_text else self.model.visual(image)


class TextEncoder(nn.Module):
    """[B, context_length] token ids -> [B, embed_dim], pooled at the EOT (the largest id)."""

    def __init__(self, model: SLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(text)


def onnx_inputs(model: SLIP, batch: int = 2) -> dict[str, torch.Tensor]:
    """Example inputs of each encoder (random images; token rows SOT ... EOT, zero-padded)."""
    g = torch.Generator().manual_seed(0)
    s = model.cfg.vision.image_size
    inputs = {"image": torch.randn(batch, 3, s, s, generator=g)}
    if model.has_text:
        t = model.cfg.text
        text = torch.zeros(batch, t.context_length, dtype=torch.long)
        for i in range(batch):
            n = min(3 + i, t.context_length - 1)
            text[i, :n] = torch.randint(1, t.vocab_size - 1, (n,), generator=g)
            text[i, n] = t.vocab_size - 1  # the EOT: the pooled position
        inputs["text"] = text
    return inputs


def export_onnx(model: SLIP, out: Path, preprocess: dict[str, Any]) -> str:
    """image_encoder.onnx (+ text_encoder.onnx) with a dynamic batch axis; checked with onnxruntime if installed."""
    _require_onnx()
    model = model.float().eval()
    model.trim_text = False  # the trim slices by a data-dependent length, which a static graph cannot hold
    out.mkdir(parents=True, exist_ok=True)
    inputs = onnx_inputs(model)
    encoders = {"image": ImageEncoder(model)}
    if model.has_text:
        encoders["text"] = TextEncoder(model)
    lines = []
    for name, encoder in encoders.items():
        path = out / f"{name}_encoder.onnx"
        with warnings.catch_warnings():
            # The graph is traced at the model's own image size and context length (the position-embedding
            # resampling branch is not taken), and the TorchScript exporter announces its deprecation: both expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                encoder,
                (inputs[name],),
                str(path),
                input_names=[name],
                output_names=["embedding"],
                dynamic_axes={name: {0: "batch"}, "embedding": {0: "batch"}},
                dynamo=False,  # the TorchScript exporter needs only `onnx`, not onnxscript
            )
        diff = check_onnx(path, encoder, inputs[name])
        lines.append(f"{path.name}" + (f" (onnxruntime max abs difference {diff:.2e})" if diff is not None else ""))
    _write_json(out / PREPROCESSOR_FILE, hf_preprocessor(preprocess))
    return "onnx " + ", ".join(lines)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401  torch.onnx.export needs it to serialise the graph
    except ImportError:
        raise ConfigError("--format onnx needs the onnx package: pip install 'openslip[export]'") from None


def check_onnx(path: Path, encoder: nn.Module, x: torch.Tensor) -> float | None:
    """Max abs difference between onnxruntime and torch on `x` and on `x` less one row (the batch axis is dynamic);
    None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diffs = []
    for rows in (x, x[1:]):
        (got,) = session.run(None, {name: rows.numpy()})
        with torch.no_grad():
            diffs.append(float((torch.from_numpy(got) - encoder(rows)).abs().max()))
    return max(diffs)


def hf_preprocessor(pre: dict[str, Any]) -> dict[str, Any]:
    """preprocessor_config.json with the keys of Hugging Face's CLIPImageProcessor (resize shorter side, centre
    crop, normalise), plus openslip's own spelling."""
    s = int(pre["image_size"])
    resize = int(s / pre["crop_fraction"])  # floor, as torchvision's Resize(int(S / crop_fraction))
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": resize},
        "resample": 2 if pre["interpolation"] == "bilinear" else 3,  # PIL.Image.BILINEAR / BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": s, "width": s},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre["mean"]),
        "image_std": list(pre["std"]),
        "do_convert_rgb": True,
        "openslip": pre,
    }


def export_hf(model: SLIP, out: Path, preprocess: dict[str, Any]) -> str:
    """config.json + model.safetensors + checksums.json (an openslip checkpoint, which `load_model(DIR)` reads
    bit-exactly) + preprocessor_config.json, in the new folder `out`."""
    extra = {"architectures": ["SLIP"], "model_type": "openslip", "preprocess": preprocess}
    save_checkpoint(out, model, config_extra=extra, update_latest=False)
    _write_json(out / PREPROCESSOR_FILE, hf_preprocessor(preprocess))
    return "Hugging Face-style folder (config.json, model.safetensors, preprocessor_config.json)"


WRITERS = {"timm": export_timm, "onnx": export_onnx, "hf": export_hf}
# The files each format writes: the only ones `--force` replaces (and, for onnx, removes when not written again).
OWN_FILES = {
    "timm": re.compile(r"model\.safetensors|config\.json"),
    "onnx": re.compile(r"(image|text)_encoder\.onnx|" + re.escape(PREPROCESSOR_FILE)),
    "hf": re.compile(
        r"model\.safetensors|config\.json|" + re.escape(CHECKSUM_FILE) + "|" + re.escape(PREPROCESSOR_FILE)
    ),
}


def exported_format(folder: Path) -> str | None:
    """The format of an earlier export in `folder`, from its config.json (None: none, or not an export): hf
    writes Hugging Face's `model_type`, timm its `pretrained_cfg`; a training or converted checkpoint has neither."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except UserError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("model_type") == "openslip" and doc.get("architectures") == ["SLIP"]:
        return "hf"
    if "pretrained_cfg" in doc and "architecture" in doc and "model" not in doc:
        return "timm"
    return None


def export(src: str | os.PathLike, fmt: str, dst: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Export the model at `src` (anything `openslip.load_model` reads) to `dst` in format `fmt`.

    `dst` is refused (one line) when it is a run or checkpoint directory, inside one, the model itself, or a folder
    holding anything this format does not write; an existing `dst` needs `overwrite`, which replaces only the
    format's own files (each atomically) and never removes the folder."""
    if fmt not in WRITERS:
        raise ConfigError(f"--format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()  # before anything is read or written
    own = OWN_FILES[fmt]
    out = check_output_dir(
        dst,
        option="DIR",
        own=own.fullmatch,
        sources=[src],
        force=overwrite,
        previous=lambda folder: exported_format(folder) == fmt,
    )
    model = load_model(src)
    preprocess = preprocess_of(model)
    with staging_dir(out) as staging:
        files = staging / "files"
        what = WRITERS[fmt](model, files, preprocess)
        written = move_files_into(files, out, last=CHECKSUM_FILE)
    for old in out.iterdir():  # an earlier export's file this one does not write again (a text encoder)
        if own.fullmatch(old.name) and old.name not in written and old.is_file():
            old.unlink()
    return what
