"""`openslip export MODEL --format timm|onnx|open_clip|hf|openslip DIR`: hand a model to timm, ONNX runtimes,
open_clip (and so CLIP_benchmark), transformers' `CLIPModel`, or an openslip folder with its preprocessing. Each
writer fills a new folder and returns a line to print; `export` checks the target first, then moves the files in
one by one (`openslip.outputs`: an export writes only its own files)."""

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
from openslip.interop.hf_clip import check_hf_faithful, hf_clip_config, hf_clip_state_dict
from openslip.interop.open_clip_layout import open_clip_model_cfg, open_clip_route, open_clip_state_dict
from openslip.interop.timm_layout import timm_config, timm_state_dict
from openslip.interop.transforms import preprocess_of
from openslip.models import SLIP
from openslip.outputs import check_output_dir
from openslip.weights.atomic import move_files_into, staging_dir
from openslip.weights.checkpoint import CHECKSUM_FILE, load_model, save_checkpoint
from openslip.weights.safe_load import read_json

FORMATS = ("timm", "onnx", "open_clip", "hf", "openslip")
PREPROCESSOR_FILE = "preprocessor_config.json"
# open_clip's `local-dir:` folder (open_clip >= 3.0, factory.py): this config, and the weights file it prefers
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


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


def export_openslip(model: SLIP, out: Path, preprocess: dict[str, Any]) -> str:
    """config.json + model.safetensors + checksums.json (an openslip checkpoint, which `load_model(DIR)` reads
    bit-exactly, SimCLR head included) + preprocessor_config.json, in the new folder `out`."""
    extra = {"architectures": ["SLIP"], "model_type": "openslip", "preprocess": preprocess}
    save_checkpoint(out, model, config_extra=extra, update_latest=False)
    _write_json(out / PREPROCESSOR_FILE, hf_preprocessor(preprocess))
    return "openslip folder (config.json, model.safetensors, preprocessor_config.json)"


def open_clip_preprocess(pre: dict[str, Any]) -> dict[str, Any]:
    """open_clip's PreprocessCfg keys: its eval transform resizes the shorter side to the crop size and centre-crops
    (no crop fraction), which is openslip's zero-shot transform (crop fraction 1)."""
    return {
        "size": int(pre["image_size"]),
        "mode": "RGB",
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "interpolation": pre["interpolation"],
        "resize_mode": "shortest",
    }


def _lost_parts(model: SLIP, fmt: str) -> list[str]:
    """One-line warnings for what a CLIP-only format leaves out."""
    lost = []
    if model.has_ssl_head:
        lost.append(f"the SimCLR head (image_mlp) is not part of the {fmt} export: only the CLIP part is")
    return lost


def export_open_clip(model: SLIP, out: Path, preprocess: dict[str, Any]) -> tuple[str, list[str]]:
    """open_clip_config.json ({"model_cfg", "preprocess_cfg"}) + open_clip_model.safetensors: the folder
    `open_clip.create_model_and_transforms("local-dir:DIR")` loads (docs/INTEROP.md)."""
    from safetensors.torch import save_file

    route = open_clip_route(model.cfg)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"model_cfg": open_clip_model_cfg(model), "preprocess_cfg": open_clip_preprocess(preprocess)}
    save_file(open_clip_state_dict(model), str(out / OPEN_CLIP_WEIGHTS))
    _write_json(out / OPEN_CLIP_CONFIG, doc)
    vision = doc["model_cfg"]["vision_cfg"]
    tower = f"timm image tower {vision['timm_model_name']}" if route == "timm" else "native image tower"
    line = f"open_clip local-dir folder ({OPEN_CLIP_CONFIG}, {OPEN_CLIP_WEIGHTS}; {tower}, native text tower)"
    return line, _lost_parts(model, "open_clip")


def export_hf(model: SLIP, out: Path, preprocess: dict[str, Any]) -> tuple[str, list[str]]:
    """config.json (model_type "clip") + model.safetensors + preprocessor_config.json: a transformers `CLIPModel`
    folder (`CLIPModel.from_pretrained(DIR)`) of the CLIP part."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_clip_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_clip_config(model))
    _write_json(out / PREPROCESSOR_FILE, hf_preprocessor(preprocess))
    lost = _lost_parts(model, "hf")
    if model.has_logit_bias:
        lost.append("the SigLIP logit_bias is not part of the hf export (CLIPModel has none): the embeddings are")
    return "transformers CLIPModel folder (config.json, model.safetensors, preprocessor_config.json)", lost


WRITERS = {
    "timm": export_timm,
    "onnx": export_onnx,
    "open_clip": export_open_clip,
    "hf": export_hf,
    "openslip": export_openslip,
}
# Checked on the model's config before anything is written: a format that cannot hold the model says why.
FAITHFUL = {"open_clip": open_clip_route, "hf": check_hf_faithful}
# The files each format writes: the only ones `--force` replaces (and, for onnx, removes when not written again).
OWN_FILES = {
    "timm": re.compile(r"model\.safetensors|config\.json"),
    "onnx": re.compile(r"(image|text)_encoder\.onnx|" + re.escape(PREPROCESSOR_FILE)),
    "open_clip": re.compile(re.escape(OPEN_CLIP_CONFIG) + "|" + re.escape(OPEN_CLIP_WEIGHTS)),
    "hf": re.compile(r"model\.safetensors|config\.json|" + re.escape(PREPROCESSOR_FILE)),
    "openslip": re.compile(
        r"model\.safetensors|config\.json|" + re.escape(CHECKSUM_FILE) + "|" + re.escape(PREPROCESSOR_FILE)
    ),
}


def exported_format(folder: Path) -> str | None:
    """The format of an earlier export in `folder`, from its config.json (None: none, or not an export): openslip
    and hf write Hugging Face's `model_type` (openslip's own, transformers' "clip"), timm its `pretrained_cfg`; a
    training or converted checkpoint has neither. (An open_clip export has no config.json: it is no checkpoint.)"""
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
        return "openslip"  # what `--format hf` wrote before it wrote transformers' CLIPModel
    if doc.get("model_type") == "clip" and doc.get("architectures") == ["CLIPModel"]:
        return "hf"
    if "pretrained_cfg" in doc and "architecture" in doc and "model" not in doc:
        return "timm"
    return None


def export(
    src: str | os.PathLike, fmt: str, dst: str | os.PathLike, *, overwrite: bool = False
) -> tuple[str, list[str]]:
    """Export the model at `src` (anything `openslip.load_model` reads) to `dst` in format `fmt`.

    `dst` is refused (one line) when it is a run or checkpoint directory, inside one, the model itself, or a folder
    holding anything this format does not write; an existing `dst` needs `overwrite`, which replaces only the
    format's own files (each atomically) and never removes the folder. A format that cannot hold the model exactly
    (open_clip, hf) is refused in one line before anything is written. Returns (what was written, one-line
    warnings of what the format leaves out)."""
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
    if fmt in FAITHFUL:
        FAITHFUL[fmt](model.cfg)
    preprocess = preprocess_of(model)
    with staging_dir(out) as staging:
        files = staging / "files"
        written_by = WRITERS[fmt](model, files, preprocess)
        what, lost = written_by if isinstance(written_by, tuple) else (written_by, [])
        written = move_files_into(files, out, last=CHECKSUM_FILE)
    for old in out.iterdir():  # an earlier export's file this one does not write again (a text encoder)
        if own.fullmatch(old.name) and old.name not in written and old.is_file():
            old.unlink()
    return what, lost
