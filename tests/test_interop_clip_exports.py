"""Exports other CLIP libraries load: `openslip export --format open_clip | hf` (docs/INTEROP.md).

Every model goes through the CLI. The written files are then read two ways:

- back into openslip through the inverse mapping (`openslip_from_open_clip`, `openslip_from_hf_clip`): this runs
  everywhere and proves the name / shape mapping and the patch-bias fold;
- by the library itself (open_clip's `create_model("local-dir:DIR")`, transformers' `CLIPModel.from_pretrained`)
  when it is installed, skipped (and said so) otherwise.

All models are float64, so the tolerance is proven by arithmetic rather than measured: the two sides differ only in
the order of float64 operations (a folded bias added to the position embedding first, attention through another
kernel), each step rounding by at most 2^-53 relative; a micro tower is a few hundred such steps on values of order
1-10, so any difference is below 1e-12 by orders of magnitude (seen: a few 1e-15). A mapping mistake (a transposed
projection, a missing LayerNorm, another eps or activation) moves embeddings by 1e-4 or more.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from clip_layout_utils import clip_state_dict
from safetensors.torch import load_file

import openslip
from openslip.cli import main
from openslip.errors import CheckpointError
from openslip.interop.export import onnx_inputs
from openslip.interop.hf_clip import openslip_from_hf_clip
from openslip.interop.open_clip_layout import open_clip_route, openslip_from_open_clip
from openslip.models import SLIP, model_config
from openslip.models.config import HeadConfig, ModelConfig, TextConfig, VisionConfig

TOL = 1e-12  # float64, see the module docstring
OPEN_CLIP = "open_clip_model.safetensors"


def _save(cfg: ModelConfig, path: Path, *, patch_bias_noise: bool = True) -> SLIP:
    torch.manual_seed(0)
    model = SLIP(cfg).double()
    if patch_bias_noise and cfg.vision.patch_bias:
        with torch.no_grad():  # timm's init leaves the bias zero, which would hide a fold that went wrong
            model.visual.patch_embed.proj.bias.normal_()
    openslip.save_model(model, path)
    return model


def _converted_openai(tmp_path: Path) -> Path:
    """OpenAI CLIP micro weights converted: ln_pre, QuickGELU in both towers, eps 1e-5, no patch bias."""
    torch.save(clip_state_dict(openai=True, dtype=torch.float64), tmp_path / "openai.pt")
    assert main(["convert", str(tmp_path / "openai.pt"), str(tmp_path / "src"), "--head-width", "32"]) == 0
    return tmp_path / "src"


def _gelu_slip_layout(tmp_path: Path) -> Path:
    """A SLIP-layout (timm) ViT, no ln_pre, eps 1e-6, a patch bias, with a GELU text tower: open_clip's native towers
    hold it (no_ln_pre, norm_kwargs, the bias folded into the position embedding)."""
    cfg = model_config("clip_vit_micro")
    cfg = dataclasses.replace(cfg, name="clip_gelu_micro", text=dataclasses.replace(cfg.text, act="gelu"))
    _save(cfg, tmp_path / "src")
    return tmp_path / "src"


def _timm_named_slip(tmp_path: Path) -> Path:
    """A SLIP (GELU image tower, QuickGELU text tower, SimCLR head) whose image tower is timm's vit_tiny_patch16_224
    exactly: open_clip's timm tower holds it. Small enough for a test (5.5M parameters)."""
    cfg = ModelConfig(
        name="slip_timm_tiny",
        vision=VisionConfig(image_size=224, patch_size=16, width=192, layers=12, heads=3),
        text=TextConfig(width=64, layers=2, heads=2),
        embed_dim=64,
        ssl_head=HeadConfig(mlp_dim=128, out_dim=32),
    )
    _save(cfg, tmp_path / "src")
    return tmp_path / "src"


def _pre_norm_with_patch_bias(tmp_path: Path) -> Path:
    """ln_pre and a patch bias, GELU image / QuickGELU text, a SimCLR head: transformers' CLIPModel holds it (the
    bias folded into the position embedding, per-tower hidden_act)."""
    cfg = model_config("slip_vit_micro")
    cfg = dataclasses.replace(cfg, name="slip_pre_norm_micro", vision=dataclasses.replace(cfg.vision, ln_pre=True))
    _save(cfg, tmp_path / "src")
    return tmp_path / "src"


OPEN_CLIP_SOURCES = {"converted_openai": _converted_openai, "gelu_slip_layout": _gelu_slip_layout}
HF_SOURCES = {"converted_openai": _converted_openai, "pre_norm_patch_bias": _pre_norm_with_patch_bias}


def _inputs(model: SLIP) -> tuple[torch.Tensor, torch.Tensor]:
    s = model.cfg.vision.image_size
    images = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return images, onnx_inputs(model, batch=3)["text"]  # token rows SOT ... EOT of different lengths


def _diffs(model: SLIP, encode_image, encode_text) -> tuple[float, float]:
    images, text = _inputs(model)
    model.eval()
    with torch.no_grad():
        di = (encode_image(images) - model.encode_image(images)).abs().max().item()
        dt = (encode_text(text) - model.encode_text(text)).abs().max().item()
    return di, dt


def _reread(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> SLIP:
    back = SLIP(cfg).double().eval()
    back.load_state_dict(sd, strict=True)
    return back


def _export(src: Path, out: Path, fmt: str, capsys) -> tuple[str, str]:
    assert main(["export", str(src), str(out), "--format", fmt]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


# ---------------------------------------------------------------------------------------------------- open_clip


@pytest.mark.parametrize("source", [*OPEN_CLIP_SOURCES, "timm_named_slip"])
def test_open_clip_export_reads_back_into_openslip(tmp_path, capsys, source):
    src = {**OPEN_CLIP_SOURCES, "timm_named_slip": _timm_named_slip}[source](tmp_path)
    model = openslip.load_model(src)
    out, err = _export(src, tmp_path / "oc", "open_clip", capsys)
    assert sorted(p.name for p in (tmp_path / "oc").iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    doc = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    sd = load_file(str(tmp_path / "oc" / "open_clip_model.safetensors"))
    cfg, back_sd = openslip_from_open_clip(doc["model_cfg"], sd)
    back = _reread(cfg, back_sd)
    di, dt = _diffs(model, back.encode_image, back.encode_text)
    print(f"open_clip -> openslip ({source}): image {di:.1e}, text {dt:.1e}")
    vision = doc["model_cfg"]["vision_cfg"]
    if source == "converted_openai":  # nothing folded: the same weights, the same code, bit for bit
        assert di == 0 and dt == 0 and doc["model_cfg"]["quick_gelu"] and "no_ln_pre" not in vision
        assert doc["preprocess_cfg"]["interpolation"] == "bicubic"  # CLIP's own preprocessing travels with it
    else:
        assert di < TOL and dt < TOL
    if source == "gelu_slip_layout":
        assert vision["no_ln_pre"] and vision["norm_kwargs"] == {"eps": 1e-6} and not doc["model_cfg"]["quick_gelu"]
        assert "visual.conv1.bias" not in sd  # folded into the position embedding
    if source == "timm_named_slip":
        assert vision["timm_model_name"] == "vit_tiny_patch16_224" and doc["model_cfg"]["quick_gelu"]
        assert "timm image tower vit_tiny_patch16_224" in out
        assert err.count("\n") == 1 and "warning: the SimCLR head (image_mlp) is not part of" in err, err
    else:
        assert err == ""


@pytest.mark.parametrize("source", [*OPEN_CLIP_SOURCES, "timm_named_slip"])
def test_open_clip_loads_the_export(tmp_path, capsys, source):
    open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed (pip install open_clip_torch)")
    if source == "timm_named_slip":
        pytest.importorskip("timm", reason="timm is not installed (open_clip's timm tower needs it)")
    src = {**OPEN_CLIP_SOURCES, "timm_named_slip": _timm_named_slip}[source](tmp_path)
    model = openslip.load_model(src)
    _export(src, tmp_path / "oc", "open_clip", capsys)
    oc = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").double().eval()  # open_clip's own loader
    # open_clip builds in float32 and casts the file's float64 weights on loading: put the exact values back
    oc.load_state_dict(load_file(str(tmp_path / "oc" / "open_clip_model.safetensors")), strict=True)
    di, dt = _diffs(model, oc.encode_image, oc.encode_text)
    print(f"open_clip {open_clip.__version__} ({source}): image {di:.1e}, text {dt:.1e}")
    assert di < TOL and dt < TOL


def test_open_clip_routes_of_the_registered_models():
    # SLIP's ViT-B/16 and ViT-L/16 are timm's names exactly; the text tower keeps QuickGELU natively
    assert open_clip_route(model_config("slip_vit_b16")) == "timm"
    assert open_clip_route(model_config("clip_vit_l16")) == "timm"


# ----------------------------------------------------------------------------------------------------------- hf


@pytest.mark.parametrize("source", HF_SOURCES)
def test_hf_export_reads_back_into_openslip(tmp_path, capsys, source):
    src = HF_SOURCES[source](tmp_path)
    model = openslip.load_model(src)
    _, err = _export(src, tmp_path / "hf", "hf", capsys)
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    cfg, back_sd = openslip_from_hf_clip(config, load_file(str(tmp_path / "hf" / "model.safetensors")))
    back = _reread(cfg, back_sd)
    di, dt = _diffs(model, back.encode_image, back.encode_text)
    print(f"hf -> openslip ({source}): image {di:.1e}, text {dt:.1e}")
    if source == "converted_openai":
        assert di == 0 and dt == 0 and err == ""
        assert config["vision_config"]["hidden_act"] == config["text_config"]["hidden_act"] == "quick_gelu"
    else:
        assert di < TOL and dt < TOL
        assert config["vision_config"]["hidden_act"] == "gelu" and config["text_config"]["hidden_act"] == "quick_gelu"
        assert config["vision_config"]["layer_norm_eps"] == 1e-6
        assert err.count("\n") == 1 and "warning: the SimCLR head (image_mlp) is not part of the hf export" in err


@pytest.mark.parametrize("source", HF_SOURCES)
def test_transformers_loads_the_export(tmp_path, capsys, source):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install transformers)"
    )
    src = HF_SOURCES[source](tmp_path)
    model = openslip.load_model(src)
    _export(src, tmp_path / "hf", "hf", capsys)
    hf, info = transformers.CLIPModel.from_pretrained(
        str(tmp_path / "hf"), torch_dtype=torch.float64, output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()

    def pooled(out) -> torch.Tensor:  # a tensor before transformers 5, a BaseModelOutputWithPooling since
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    di, dt = _diffs(
        model,
        lambda x: pooled(hf.get_image_features(pixel_values=x)),
        lambda t: pooled(hf.get_text_features(input_ids=t)),
    )
    print(f"transformers {transformers.__version__} ({source}): image {di:.1e}, text {dt:.1e}")
    assert di < TOL and dt < TOL


def test_hf_export_is_not_read_as_a_checkpoint(tmp_path, capsys):
    _export(_converted_openai(tmp_path), tmp_path / "hf", "hf", capsys)
    with pytest.raises(CheckpointError, match="is a transformers CLIPModel"):
        openslip.load_model(tmp_path / "hf")


# ---------------------------------------------------------------------------------------------------- refusals


def _refused(capsys, argv: list[str], out: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("openslip export: error: ") and "Traceback" not in err, err
    assert not out.exists()  # refused before anything is written
    return err


@pytest.mark.parametrize("fmt", ["open_clip", "hf"])
def test_clip_exports_refuse_what_they_cannot_hold(tmp_path, capsys, fmt):
    openslip.save_model(openslip.create_model("simclr_vit_micro"), tmp_path / "simclr")
    err = _refused(capsys, ["export", str(tmp_path / "simclr"), str(tmp_path / "o"), "--format", fmt], tmp_path / "o")
    assert "SimCLR-only" in err and "--format timm or onnx" in err
    # SLIP's own layout: GELU image / QuickGELU text at a size timm does not name (open_clip), no ln_pre (hf)
    openslip.save_model(openslip.create_model("slip_vit_micro"), tmp_path / "slip")
    err = _refused(capsys, ["export", str(tmp_path / "slip"), str(tmp_path / "o"), "--format", fmt], tmp_path / "o")
    if fmt == "open_clip":
        assert "open_clip cannot hold slip_vit_micro faithfully" in err and "quick_gelu flag" in err
    else:
        assert "cannot hold this model faithfully" in err and "pre_layrnorm" in err


def test_open_clip_export_keeps_a_sigmoid_models_logit_bias(tmp_path, capsys):
    cfg = model_config("clip_vit_micro", contrastive="sigmoid")
    model = _save(dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, act="gelu")), tmp_path / "src")
    _export(tmp_path / "src", tmp_path / "oc", "open_clip", capsys)
    doc = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert doc["model_cfg"]["init_logit_bias"] == -10.0  # SigLIP's initial bias: open_clip then holds a logit_bias
    back_cfg, back_sd = openslip_from_open_clip(doc["model_cfg"], load_file(str(tmp_path / "oc" / OPEN_CLIP)))
    assert back_cfg.contrastive == "sigmoid" and torch.equal(back_sd["logit_bias"], model.logit_bias.detach())
