"""Each protocol's test-image preprocessing against a re-statement of the reference's torchvision pipeline on PIL
(Resize(floor(S / crop_fraction)) -> CenterCrop(S)), and the CLI option that changes it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import openslip.eval.datasets as datasets
from openslip.cli import main
from openslip.data.augment.params import IMAGENET_MEAN, IMAGENET_STD
from openslip.errors import ConfigError
from openslip.eval.preprocess import PROTOCOL_PREPROCESS, eval_transform
from openslip.train.config import EvalConfig

pytestmark = pytest.mark.usefixtures("one_thread")
PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none", "--image-size", "32"]


def _torchvision_on_pil(img: Image.Image, size: int, crop_fraction: float, interpolation: str) -> np.ndarray:
    """torchvision's Resize(int) then CenterCrop on a PIL image, written out: shorter side to floor(S / f), the
    longer scaled with int(), PIL's antialiased filter, centre offsets rounded."""
    w, h = img.size
    short = int(math.floor(size / crop_fraction))
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    resized = np.asarray(img.resize((nw, nh), PIL_FILTERS[interpolation]))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return resized[top : top + size, left : left + size].astype(np.float64)


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_PREPROCESS))
@pytest.mark.parametrize(("h", "w"), [(300, 400), (480, 360), (225, 225), (100, 37)])
def test_protocol_transform_matches_torchvision_on_pil(protocol: str, h: int, w: int) -> None:
    rng = np.random.default_rng(h * w)
    img = Image.fromarray(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)).resize((w, h))
    t = eval_transform(protocol, 64)
    pre = PROTOCOL_PREPROCESS[protocol]
    assert (t.config.eval_crop_fraction, t.interpolation) == (pre.crop_fraction, pre.interpolation)
    x = t(img)  # [3, 64, 64], normalised
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    got = ((x.double() * std + mean) * 255).permute(1, 2, 0).numpy()
    want = _torchvision_on_pil(img, 64, pre.crop_fraction, pre.interpolation)
    assert got.shape == want.shape
    # torch's uint8 antialias kernels follow PIL's filters to within one grey level of rounding
    assert np.abs(got - want).max() <= 1.0 + 1e-3 and np.abs(got - want).mean() < 0.05


def test_reference_sizes_at_224() -> None:
    img = Image.new("RGB", (500, 375))
    sizes = {p: eval_transform(p, 224) for p in ("zeroshot", "linear", "finetune")}
    # zero-shot: Resize(224) -> CenterCrop(224); linear: Resize(256); BEiT: Resize(256, bicubic)
    assert [round(224 / t.config.eval_crop_fraction) for t in sizes.values()] == [224, 256, 256]
    assert sizes["finetune"].interpolation == "bicubic" and tuple(sizes["zeroshot"](img).shape) == (3, 224, 224)
    assert eval_transform("zeroshot", 224, 0.875).key != eval_transform("zeroshot", 224).key  # caches differ


def _folder(root: Path) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("argv", "protocol"),
    [
        (["eval", "zeroshot"], "zeroshot"),
        (["eval", "knn", "--train", "{root}"], "knn"),
        (["eval", "linear", "--train", "{root}"], "linear"),
        (["finetune", "--train", "{root}", "--preset", "demo", "epochs=1"], "finetune"),
    ],
)
@pytest.mark.parametrize("crop", [None, 0.5])
def test_cli_uses_the_protocols_transform_and_crop_fraction(
    argv: list[str], protocol: str, crop: float | None, tmp_path: Path, monkeypatch, capsys
) -> None:
    root = _folder(tmp_path / "set")
    seen: list[tuple[str, float | None]] = []

    def spy(p: str, size: int, crop_fraction: float | None = None, inputs=None):
        seen.append((p, crop_fraction))
        return eval_transform(p, size, crop_fraction, inputs)

    monkeypatch.setattr(datasets, "eval_transform", spy)
    extra = [] if crop is None else ["--crop-fraction", str(crop)]
    code = main([*(a.format(root=root) for a in argv), *RANDOM, "--dataset", str(root), *extra])
    assert code == 0, capsys.readouterr().err
    assert seen and all(s == (protocol, crop) for s in seen)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_bad_crop_fraction_is_one_line(value: str, tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "set")
    code = main(["eval", "zeroshot", *RANDOM, "--dataset", str(root), "--crop-fraction", value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--crop-fraction must be in (0, 1]" in err
    with pytest.raises(ConfigError, match="eval.crop_fraction must be in"):
        EvalConfig(crop_fraction=float(value))


@pytest.mark.parametrize("command", ["zeroshot", "linear"])
def test_converted_clip_weights_are_evaluated_as_clip_preprocesses(
    command: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Weights converted from OpenAI CLIP were trained on CLIP's mean / std and bicubic resize: every evaluation
    normalises and resizes as CLIP's own transform does (open_clip's too), whatever the protocol's default."""
    from clip_layout_utils import clip_state_dict

    from openslip.eval.preprocess import ModelInputs
    from openslip.weights.clip_layout import CLIP_MEAN, CLIP_STD

    torch.save(clip_state_dict(openai=True, image_size=32, vocab=49408, context=77), tmp_path / "clip.pt")
    assert main(["convert", str(tmp_path / "clip.pt"), str(tmp_path / "clip"), "--head-width", "32"]) == 0
    root = _folder(tmp_path / "set")
    seen = []

    def spy(p: str, size: int, crop_fraction=None, inputs=None):
        t = eval_transform(p, size, crop_fraction, inputs)
        seen.append((t.config.mean, t.config.std, t.interpolation))
        return t

    monkeypatch.setattr(datasets, "eval_transform", spy)
    argv = ["eval", command, "--model", str(tmp_path / "clip"), "--dataset", str(root)]
    if command == "linear":
        argv += ["--train", str(root)]
    assert main(argv) == 0, capsys.readouterr()
    assert seen and all(s == (CLIP_MEAN, CLIP_STD, "bicubic") for s in seen)

    # the pixels: PIL's bicubic resize of the shorter side to S, then the centre crop (CLIP's `_transform`)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((160, 120))
    t = eval_transform("linear", 64, inputs=ModelInputs(CLIP_MEAN, CLIP_STD, "bicubic"))
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    got = ((t(img).double() * std + mean) * 255).permute(1, 2, 0).numpy()
    want = _torchvision_on_pil(img, 64, 0.875, "bicubic")
    assert np.abs(got - want).max() <= 1.0 + 1e-3 and np.abs(got - want).mean() < 0.05
