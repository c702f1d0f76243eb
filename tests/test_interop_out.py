"""Weights out: `openslip export --format timm|onnx|openslip` and `create_model_and_transforms` (docs/INTEROP.md);
the open_clip and hf formats are tested in test_interop_clip_exports.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_layout_utils import clip_state_dict
from safetensors.torch import load_file

import openslip
from openslip.cli import main
from openslip.data.augment.params import AugmentConfig
from openslip.interop.timm_layout import timm_model_args, timm_name
from openslip.models import model_config


def _timm_vit_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """timm's VisionTransformer forward (global_pool='token', num_classes=0) re-stated over its state dict."""
    args, eps = cfg["model_args"], cfg["norm_eps"]
    heads = args["num_heads"]

    def ln(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=eps)

    def lin(name: str, t: torch.Tensor) -> torch.Tensor:
        return t @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    act = (lambda t: t * torch.sigmoid(1.702 * t)) if args.get("act_layer") == "quick_gelu" else F.gelu
    p = args["patch_size"]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd.get("patch_embed.proj.bias"), stride=p)
    x = x.flatten(2).transpose(1, 2)  # [B, N, D]
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    if args["pre_norm"]:
        x = ln("norm_pre", x)
    B, N, D = x.shape
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}"
        qkv = lin(f"{b}.attn.qkv", ln(f"{b}.norm1", x)).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(-1) @ v
        x = x + lin(f"{b}.attn.proj", a.transpose(1, 2).reshape(B, N, D))
        x = x + lin(f"{b}.mlp.fc2", act(lin(f"{b}.mlp.fc1", ln(f"{b}.norm2", x))))
        i += 1
    return ln("norm", x)[:, 0]


def _converted_clip(tmp_path) -> openslip.SLIP:
    torch.save(clip_state_dict(openai=True, dtype=torch.float64), tmp_path / "openai.pt")
    assert main(["convert", str(tmp_path / "openai.pt"), str(tmp_path / "clip"), "--head-width", "32"]) == 0
    return openslip.load_model(tmp_path / "clip")


@pytest.mark.parametrize("source", ["slip_vit_micro", "converted_openai"])
def test_export_timm_matches_timm_forward(tmp_path, capsys, source):
    if source == "slip_vit_micro":
        torch.manual_seed(0)
        model = openslip.create_model(source).double()
        openslip.save_model(model, tmp_path / "clip")
    else:
        model = _converted_clip(tmp_path)
    assert main(["export", str(tmp_path / "clip"), str(tmp_path / "timm"), "--format", "timm"]) == 0
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())
    sd = load_file(str(tmp_path / "timm" / "model.safetensors"))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        diff = (model.visual(x) - _timm_vit_forward(sd, x, cfg)).abs().max().item()
    print(f"timm-out ({source}, {cfg['architecture']}) max abs difference {diff:.2e}")
    assert diff < 1e-12
    assert cfg["model_args"]["num_classes"] == 0 and not cfg["exact_name"]
    # the preprocessing the tower was trained with: openslip's bilinear / ImageNet statistics, CLIP's bicubic / own
    pre = cfg["pretrained_cfg"]
    if source == "converted_openai":
        assert cfg["architecture"] == "vit_base_patch16_clip_quickgelu_224" and "patch_embed.proj.bias" not in sd
        assert pre["interpolation"] == "bicubic" and pre["mean"][0] == pytest.approx(0.48145466)
    else:
        assert pre["interpolation"] == "bilinear" and pre["mean"] == list(AugmentConfig().mean)


def test_timm_names_of_the_registered_sizes():
    # SLIP's ViT-B/16 is timm's vit_base_patch16_224 as it is; its ViT-S/16 has 12 heads (MoCo v3), timm's 6.
    assert timm_name(model_config("slip_vit_b16").vision) == ("vit_base_patch16_224", True)
    assert timm_name(model_config("slip_vit_l16").vision) == ("vit_large_patch16_224", True)
    small = model_config("slip_vit_s16").vision
    assert timm_name(small) == ("vit_small_patch16_224", False) and timm_model_args(small)["num_heads"] == 12


def test_export_openslip_reloads_bit_exactly_with_transforms(tmp_path, capsys):
    model = _converted_clip(tmp_path)
    assert main(["export", str(tmp_path / "clip"), str(tmp_path / "folder"), "--format", "openslip"]) == 0
    back = openslip.load_model(tmp_path / "folder")
    a, b = model.state_dict(), back.state_dict()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"openslip-folder round trip max abs difference {diff:.1e}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and back.cfg == model.cfg
    pre = json.loads((tmp_path / "folder" / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32} and pre["image_mean"][0] == pytest.approx(0.48145466)
    m, train_tf, eval_tf = openslip.create_model_and_transforms(str(tmp_path / "folder"))
    image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    assert eval_tf(image).shape == (3, 32, 32) and set(train_tf(image)) == {"image"}
    assert eval_tf.config.mean[0] == pytest.approx(0.48145466)  # CLIP's statistics travel with its weights
    with pytest.raises(TypeError):  # an option that means nothing for weights read from a file is an error
        openslip.create_model_and_transforms(str(tmp_path / "folder"), image_size=64)
    m, train_tf, eval_tf = openslip.create_model_and_transforms("slip_vit_micro")
    assert eval_tf.config.mean == AugmentConfig().mean
    assert eval_tf(image).shape == (3, 32, 32) and set(train_tf(image)) == {"image", "view1", "view2"}


def test_export_onnx(tmp_path, capsys):
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    openslip.save_model(openslip.create_model("slip_vit_micro"), tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "onnx" / "image_encoder.onnx").is_file() and (tmp_path / "onnx" / "text_encoder.onnx").is_file()
    diffs = [float(d) for d in re.findall(r"max abs difference ([0-9.e+-]+)", out)]
    print(out)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    assert len(diffs) == 2 and max(diffs) < 1e-4  # float32 graphs: op order differs from torch's


def test_export_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o"), "--format", "hf"]) != 0
    assert "no such file" in capsys.readouterr().err
    openslip.save_model(openslip.create_model("clip_vit_micro"), tmp_path / "m")
    (tmp_path / "o").mkdir()
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "timm"]) != 0
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "keras"])


def test_cli_lists_every_export_format():
    from openslip.commands.export import FORMATS as CLI_FORMATS
    from openslip.interop.export import FORMATS, WRITERS

    assert CLI_FORMATS == FORMATS == tuple(WRITERS)
