"""OpenAI CLIP / open_clip weights in: `openslip convert` and `load_model` map them exactly, `init_from` trains from
them (docs/INTEROP.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from clip_layout_utils import clip_encode_image, clip_encode_text, clip_state_dict, tokens
from train_utils import final_weights, overrides

from openslip.cli import main
from openslip.weights.checkpoint import load_model


def _max_diff(model, sd, heads, quick, image_size, context, vocab):
    torch.manual_seed(0)
    image = torch.randn(3, 3, image_size, image_size, dtype=torch.float64)
    text = tokens(4, context, vocab)
    model = model.double()
    with torch.no_grad():
        di = (model.encode_image(image) - clip_encode_image(sd, image, heads, quick)).abs().max().item()
        dt = (model.encode_text(text) - clip_encode_text(sd, text, heads, quick)).abs().max().item()
    return di, dt


@pytest.mark.parametrize(("layout", "activation"), [("openai", None), ("open_clip", "gelu")])
def test_convert_clip_layout_matches_clip_forward(tmp_path, capsys, layout, activation):
    """Random CLIP-layout weights (float64) -> `openslip convert` -> CLIP's image and text embeddings."""
    sd = clip_state_dict(openai=layout == "openai", image_size=64, dtype=torch.float64)
    src = tmp_path / "weights.pt"
    torch.save(sd, src)
    argv = ["convert", str(src), str(tmp_path / "out"), "--head-width", "32"]
    argv += ["--activation", activation] if activation else []
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())["model"]
    assert cfg["vision"]["ln_pre"] and cfg["vision"]["heads"] == 2 and cfg["vision"]["image_size"] == 64
    assert cfg["vision"]["act"] == (activation or "quick_gelu") and cfg["text"]["context_length"] == 12
    model = load_model(tmp_path / "out")  # reloads from its recorded config
    di, dt = _max_diff(model, sd, 2, activation is None, 64, 12, 100)
    print(f"{layout}-in max abs difference: image {di:.2e}, text {dt:.2e}")
    assert di < 1e-12 and dt < 1e-12
    # load_model reads the raw file too
    direct = load_model(src, head_width=32, activation=activation)
    assert torch.equal(direct.visual.pos_embed[0], sd["visual.positional_embedding"])


def test_open_clip_safetensors_and_missing_activation(tmp_path, capsys):
    from safetensors.torch import save_file

    sd = clip_state_dict()
    src = tmp_path / "open_clip_model.safetensors"
    save_file(sd, str(src))
    assert main(["convert", str(src), str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err.strip()
    assert "--activation" in err and len(err.splitlines()) == 1
    assert main(["convert", str(src), str(tmp_path / "a"), "--activation", "gelu"]) == 0
    assert load_model(tmp_path / "a").cfg.vision.heads == 1  # width 64 / head width 64


def test_clip_layout_unknown_entries_are_one_line_errors(tmp_path, capsys):
    sd = clip_state_dict(openai=True)
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(64)
    torch.save(sd, tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert "ls_1.gamma" in err and len(err.splitlines()) == 1


def test_train_init_from_clip_weights(tmp_path, capsys):
    """SLIP training starting from converted CLIP weights: the CLIP parts are loaded, the SimCLR head is new and
    listed, the optimizer and step start fresh; a source of other shapes is a one-line error."""
    sd = clip_state_dict(patch=8, image_size=32, context=77, vocab=49408, embed=64)
    torch.save(sd, tmp_path / "open_clip.pt")
    argv = [
        "convert",
        str(tmp_path / "open_clip.pt"),
        str(tmp_path / "clip"),
        "--activation",
        "gelu",
        "--head-width",
        "32",
    ]
    assert main(argv) == 0
    run = tmp_path / "run"
    tiny_lr = ["train.steps=1", "optim.lr=1e-12", "optim.start_lr=0", "optim.wd=0"]
    assert main(["train", *overrides(run, f"init_from={tmp_path / 'clip'}", *tiny_lr)]) == 0
    err = capsys.readouterr().err
    assert "initialised as usual: image_mlp" in err and "optimizer and step start fresh" in err
    w = final_weights(run)
    assert (w["visual.pos_embed"][0] - sd["visual.positional_embedding"]).abs().max() < 1e-6
    assert (w["text_projection"] - sd["text_projection"]).abs().max() < 1e-6
    trained = load_model(run)
    assert trained.cfg.name == "slip_vit_micro" and trained.cfg.vision.ln_pre and trained.cfg.vision.norm_eps == 1e-5
    assert trained.has_ssl_head
    # resuming takes the layout from the run's checkpoint: the source is no longer needed
    shutil.rmtree(tmp_path / "clip")
    assert main(["train", *overrides(run, f"init_from={tmp_path / 'clip'}", *tiny_lr[1:], "train.steps=2")]) == 0
    assert "resumed from" in capsys.readouterr().err and load_model(run).cfg.vision.ln_pre

    other = clip_state_dict(patch=16, image_size=32, context=77, vocab=49408, embed=64, openai=True)
    torch.save(other, tmp_path / "other.pt")
    assert main(["train", *overrides(tmp_path / "run2", f"init_from={tmp_path / 'other.pt'}", "train.steps=1")]) != 0
    err = capsys.readouterr().err.strip()
    assert "do not fit" in err and "visual.patch_embed.proj.weight" in err and len(err.splitlines()) == 1


def test_init_from_missing_path_is_one_line_error(tmp_path, capsys):
    assert main(["train", *overrides(tmp_path / "run", f"init_from={tmp_path / 'nope'}", "train.steps=1")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("openslip train: error: init_from=") and len(err.splitlines()) == 1
