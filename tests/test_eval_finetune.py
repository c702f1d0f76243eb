"""Finetuning: RandAugment ops and random erasing, the training transform, resume, precision, 2 processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_distributed
from PIL import Image, ImageEnhance, ImageOps

import openslip.eval.finetune as ft
from openslip.data.augment.classify import FinetuneTransform
from openslip.data.augment.randaugment import INCREASING_OPS, OPS, RandAugment, RandomErasing, parse_randaug
from openslip.errors import CheckpointError, ConfigError
from openslip.eval.finetune import STATE_FILE, FinetuneConfig, SeededSamples, finetune
from openslip.models import create_model


def _image(h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    """A uint8 [H, W, 3] image with gradients and edges (a flat random image would make autocontrast a no-op)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] //= 2
    return np.ascontiguousarray(np.cumsum(arr, axis=1) % 256).astype(np.uint8)


def _chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _apply(name: str, arg: float, img: torch.Tensor) -> torch.Tensor:
    return RandAugment().apply(img, [(name, arg)])


# --- RandAugment ----------------------------------------------------------------------------------------


def test_op_registry_is_timms_increasing_set() -> None:
    assert len(INCREASING_OPS) == len(set(INCREASING_OPS)) == 15
    assert set(OPS.names()) == {n.lower() for n in INCREASING_OPS}
    assert RandAugment().ops == INCREASING_OPS
    with pytest.raises(ValueError):  # the registry rejects a second op of the same name
        OPS.register("Invert", OPS.get("Invert"))


@pytest.mark.parametrize("name", INCREASING_OPS)
def test_ops_keep_shape_dtype_and_range(name: str) -> None:
    op = OPS.get(name)
    u8 = _chw(_image())
    f32 = u8.float() / 255
    for level in (0.0, 4.5, 10.0):
        for sign in (1.0, -1.0):
            arg = op.arg(level, sign)
            y = _apply(name, arg, u8)
            assert y.dtype == torch.uint8 and y.shape == u8.shape
            z = _apply(name, arg, f32)
            assert z.dtype == torch.float32 and z.shape == f32.shape
            assert z.min() >= 0 and z.max() <= 1 and torch.isfinite(z).all()
            # the float path agrees with the uint8 one to within rounding (a few levels after resampling)
            assert (z * 255 - y.float()).abs().mean() < 2.0


def test_ops_at_level_zero_are_identity_where_defined() -> None:
    u8 = _chw(_image())
    identity = [n for n in INCREASING_OPS if OPS.get(n).identity_at_zero]
    # Not identities by definition: the three argument-free ops and posterize, which keeps 4 bits at level 0.
    assert set(INCREASING_OPS) - set(identity) == {"AutoContrast", "Equalize", "Invert", "PosterizeIncreasing"}
    for name in identity:
        for sign in (1.0, -1.0):
            arg = OPS.get(name).arg(0.0, sign)
            assert torch.equal(_apply(name, arg, u8), u8), name
            torch.testing.assert_close(_apply(name, arg, u8.float() / 255), u8.float() / 255, atol=1e-5, rtol=0)


def test_ops_match_pil() -> None:
    """The uint8 path against PIL (what timm runs): exact for the level ops, within a grey level for the
    blends (PIL truncates where we round), and within bilinear-border differences for the geometry."""
    arr = _image()
    pil, img = Image.fromarray(arr), _chw(arr)
    fill = (124, 116, 104)

    def diff(name: str, arg: float, ref: Image.Image) -> np.ndarray:
        ours = _apply(name, arg, img).permute(1, 2, 0).numpy().astype(int)
        return np.abs(ours - np.asarray(ref).astype(int))

    assert diff("AutoContrast", 0, ImageOps.autocontrast(pil)).max() <= 1
    assert diff("Equalize", 0, ImageOps.equalize(pil)).max() == 0
    assert diff("Invert", 0, ImageOps.invert(pil)).max() == 0
    assert diff("PosterizeIncreasing", 2, ImageOps.posterize(pil, 2)).max() == 0
    assert diff("SolarizeIncreasing", 100, ImageOps.solarize(pil, 100)).max() == 0
    for f in (0.3, 1.7):
        assert diff("ColorIncreasing", f, ImageEnhance.Color(pil).enhance(f)).max() <= 1
        assert diff("ContrastIncreasing", f, ImageEnhance.Contrast(pil).enhance(f)).max() <= 1
        assert diff("BrightnessIncreasing", f, ImageEnhance.Brightness(pil).enhance(f)).max() <= 1
        assert diff("SharpnessIncreasing", f, ImageEnhance.Sharpness(pil).enhance(f)).max() <= 1
    w, h = pil.size
    geometric = {
        ("Rotate", 20.0): pil.rotate(20.0, resample=Image.BILINEAR, fillcolor=fill),
        ("ShearX", 0.2): pil.transform(pil.size, Image.AFFINE, (1, 0.2, 0, 0, 1, 0), Image.BILINEAR, fillcolor=fill),
        ("ShearY", -0.2): pil.transform(pil.size, Image.AFFINE, (1, 0, 0, -0.2, 1, 0), Image.BILINEAR, fillcolor=fill),
        ("TranslateXRel", 0.25): pil.transform(pil.size, Image.AFFINE, (1, 0, w / 4, 0, 1, 0), fillcolor=fill),
        ("TranslateYRel", -0.25): pil.transform(pil.size, Image.AFFINE, (1, 0, 0, 0, 1, -h / 4), fillcolor=fill),
    }
    for (name, arg), ref in geometric.items():
        d = diff(name, arg, ref)
        # the same pixels move the same way; PIL does not blend the fill into the border pixels, we do
        assert d.mean() < 2.5 and np.mean(d > 1) < 0.1, name
    # SolarizeAdd by hand: +50 below 128, clipped
    x = torch.tensor([0, 100, 127, 128, 250], dtype=torch.uint8).view(1, 1, 5).expand(3, 1, 5)
    assert _apply("SolarizeAdd", 50, x)[0, 0].tolist() == [50, 150, 177, 128, 250]


def test_rotate_is_counter_clockwise() -> None:
    img = torch.zeros(3, 9, 9, dtype=torch.uint8)
    img[:, 4, 7] = 255  # right of the centre
    out = _apply("Rotate", 90.0, img)
    assert (out[0] == 255).nonzero().tolist() == [[1, 4]]  # now above it (PIL's rotate(90))


def test_randaugment_draws() -> None:
    ra = RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5)
    g = torch.Generator().manual_seed(0)
    plans = [ra.sample(g) for _ in range(2000)]
    applied = [p for plan in plans for p in plan]
    assert abs(len(applied) / (2 * len(plans)) - 0.5) < 0.04  # each op slot applies with p = 0.5
    counts = {name: 0 for name in INCREASING_OPS}
    for name, _ in applied:
        counts[name] += 1
    assert min(counts.values()) > 0.5 * len(applied) / 15  # every op drawn, roughly uniformly
    rotations = np.array([a for n, a in applied if n == "Rotate"])
    assert np.abs(rotations).max() <= 30 and 20 < np.abs(rotations).mean() < 34  # ~ 30 x N(9, 0.5) / 10
    assert 0.3 < np.mean(rotations > 0) < 0.7  # random sign
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    img = _chw(_image())
    assert torch.equal(ra(img, g1), ra(img, g2))
    assert RandAugment(num_ops=0).sample(g) == [] and RandAugment(prob=0.0).sample(g) == []


def test_parse_randaug() -> None:
    ra = parse_randaug("rand-m9-mstd0.5-inc1")
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob) == (2, 9.0, 0.5, 0.5)
    ra = parse_randaug("rand-n3-m5-mstd0-p1-inc1")
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob) == (3, 5.0, 0.0, 1.0)
    assert parse_randaug(None) is None and parse_randaug("none") is None and parse_randaug("") is None
    for bad in ("rand-m9", "rand-m9-inc0", "autoaug-m9-inc1", "rand-m9-x3-inc1", "rand-m11-inc1", "rand-mfoo-inc1"):
        with pytest.raises(ConfigError):
            parse_randaug(bad)


# --- random erasing ----------------------------------------------------------------------------------------


def test_random_erasing_rate_and_area() -> None:
    erase = RandomErasing(0.25)
    g = torch.Generator().manual_seed(0)
    img = torch.full((3, 32, 32), 7.0)
    fractions, noise = [], []
    for _ in range(2000):
        out = erase(img, g)
        changed = out != 7.0
        assert torch.equal(changed[0], changed[1]) and torch.equal(changed[0], changed[2])  # one box, all channels
        if changed.any():
            fractions.append(changed[0].float().mean().item())
            noise.append(out[changed])
    # 2000 draws of p = 0.25: the standard error is 0.0097, so +-0.035 is 3.6 sigma
    assert abs(len(fractions) / 2000 - 0.25) < 0.035
    # area U(0.02, 1/3) has mean 0.177; boxes that do not fit (h or w >= 32) are redrawn, lowering it a little
    assert 0.13 < np.mean(fractions) < 0.19 and min(fractions) > 0.01 and max(fractions) < 0.36
    values = torch.cat(noise)
    assert abs(values.mean().item()) < 0.05 and abs(values.std().item() - 1) < 0.05  # per-pixel N(0, 1)
    assert torch.equal(RandomErasing(0.0)(img, g), img)


# --- the training transform and its seeding --------------------------------------------------------------


def test_finetune_transform() -> None:
    from openslip.data.augment.classify import ProbeTransform
    from openslip.data.augment.color import normalize
    from openslip.data.augment.params import sample_view_params
    from openslip.data.augment.views import resize_crop_uint8

    arr = _image(40, 48)
    cfg = FinetuneConfig()
    full = FinetuneTransform.from_config(32, cfg)
    assert full.randaug is not None and full.erase is not None and full.erase.prob == 0.25
    x1 = full(arr, torch.Generator().manual_seed(1))
    assert x1.shape == (3, 32, 32) and x1.dtype == torch.float32
    assert torch.equal(x1, full(arr, torch.Generator().manual_seed(1)))
    assert not torch.equal(x1, full(arr, torch.Generator().manual_seed(2)))
    # with RandAugment and erasing off it draws ProbeTransform's crop and flip, but resizes bicubic as BEiT
    # (--train_interpolation bicubic) where ProbeTransform (main_linear.py) is bilinear
    plain = FinetuneTransform.from_config(32, replace(cfg, randaug="none", reprob=0.0))
    assert plain.randaug is None and plain.erase is None
    torch.manual_seed(3)
    a = plain(arr)
    torch.manual_seed(3)
    params = sample_view_params(40, 48, plain.recipe)
    y = resize_crop_uint8(torch.from_numpy(arr).permute(2, 0, 1)[None], params.crop, (32, 32), "bicubic")[0]
    y = y.flip(-1) if params.flip else y
    assert torch.equal(a, normalize(y.float().div_(255), plain.mean, plain.std))
    torch.manual_seed(3)
    assert not torch.equal(a, ProbeTransform(32)(arr))
    # the demo preset: whole image, no flip, no RandAugment or erasing -> the same tensor for every draw
    demo = FinetuneTransform.from_config(32, ft.PRESETS["demo"])
    square = _image(40, 40)
    assert demo.recipe.flip_p == 0 and torch.equal(
        demo(square, torch.Generator().manual_seed(1)), demo(square, torch.Generator().manual_seed(2))
    )


def test_seeded_samples_depend_on_seed_epoch_index_only() -> None:
    from openslip.eval.datasets import open_classification

    ds = open_classification("demo_shapes", split="train", image_size=32, n=4)
    ds.with_transform(FinetuneTransform.from_config(32, FinetuneConfig()))
    view = SeededSamples(ds, seed=0, epoch=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = [view[i][0] for i in (2, 0, 1)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left as it was
    torch.manual_seed(456)
    again = [view[i][0] for i in (2, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(SeededSamples(ds, seed=0, epoch=2)[2][0], first[0])


def test_config_errors() -> None:
    for bad in ({"reprob": -0.1}, {"reprob": 1.5}, {"randaug": "rand-m9-mstd0.5"}, {"randaug": "trivial"}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision"):
        FinetuneConfig(precision="fp8")
    assert FinetuneConfig(randaug=None, reprob=0).randaug is None


# --- finetuning runs: resume, precision ---------------------------------------------------------------------

_CFG = FinetuneConfig(epochs=2, warmup_epochs=0.5, batch_size=8, drop_path=0.1)  # BEiT's augmentation, all on


def _sets(n_train: int = 16, n_test: int = 8) -> tuple:
    from openslip.eval.datasets import open_classification

    train = open_classification("demo_shapes", split="train", image_size=32, n=n_train)
    train.with_transform(FinetuneTransform.from_config(32, _CFG))
    return train, open_classification("demo_shapes", split="test", image_size=32, n=n_test)


def test_resume_after_a_kill_gives_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = create_model("slip_vit_micro")
    train, test = _sets()
    straight, vit = finetune(model, train, test, num_classes=8, config=_CFG, log=False)

    calls = []
    mix = ft.mix_batch

    def killed_in_epoch_2(*args, **kwargs):  # 2 steps per epoch: the 3rd batch is in epoch 2
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return mix(*args, **kwargs)

    monkeypatch.setattr(ft, "mix_batch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, train, test, num_classes=8, config=_CFG, log=False, out_dir=tmp_path)
    monkeypatch.setattr(ft, "mix_batch", mix)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)

    resumed, vit2 = finetune(model, train, test, num_classes=8, config=_CFG, log=False, out_dir=tmp_path)
    a, b = vit.state_dict(), vit2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed == straight
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["epoch"] == 2

    # A finished run resumes to its result without training; another config is refused.
    again, vit3 = finetune(model, train, test, num_classes=8, config=_CFG, log=False, out_dir=tmp_path, resume=True)
    assert again == straight and all(torch.equal(a[k], vit3.state_dict()[k]) for k in a)
    with pytest.raises(CheckpointError, match="base_lr"):
        finetune(model, train, test, num_classes=8, config=replace(_CFG, base_lr=1e-3), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="backbone"):
        finetune(create_model("slip_vit_micro"), train, test, num_classes=8, config=_CFG, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="nothing to resume"):
        finetune(model, train, test, num_classes=8, config=_CFG, out_dir=tmp_path / "empty", resume=True)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("slip_vit_micro")
    train, test = _sets()
    cfg = replace(_CFG, epochs=1, precision=precision)
    m, vit = finetune(model, train, test, num_classes=8, config=cfg, log=False, out_dir=tmp_path)
    assert 0 <= m["top1"] <= 100 and all(torch.isfinite(p).all() for p in vit.parameters())
    assert all(p.dtype == torch.float32 for p in vit.parameters())  # autocast, not a cast of the weights
    scaler = torch.load(tmp_path / STATE_FILE, weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # the loss scale is saved for resuming


def test_cli_out_dir_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from openslip.cli import main

    out = tmp_path / "ft.json"
    argv = ["finetune", "--model", "slip_vit_micro", "--pretrained", "none", "--dataset", "demo_shapes", "-n", "8"]
    argv += ["--num-train", "16", "epochs=1", "batch_size=8", "reprob=0.5"]
    argv += ["--out-dir", str(tmp_path / "run"), "--output", str(out)]
    assert main([*argv, "randaug=rand-m9-mstd0.5-inc1"]) == 0
    first = json.loads(out.read_text())
    assert main([*argv, "randaug=rand-m9-mstd0.5-inc1"]) == 0  # the second run finds the finished state, scores
    stdout = capsys.readouterr().out
    assert "resumed from" in stdout and json.loads(out.read_text()) == first
    assert main([*argv, "--no-resume", "randaug=none"]) == 0  # starts over with other settings
    assert main([*argv, "randaug=rand-m9-inc1"]) == 2  # refused: the saved run had RandAugment off
    assert "different finetuning run" in capsys.readouterr().err


# --- 2 processes -------------------------------------------------------------------------------------------

# Mixup / CutMix pair each image with the reversed *local* batch and drop-path masks come from per-rank
# streams, so those two are off here; RandAugment and erasing stay on, since they are a function of
# (seed, epoch, sample index) only.
_DIST_CFG = FinetuneConfig(
    epochs=2, warmup_epochs=0.5, batch_size=8, base_lr=1.0, drop_path=0.0, mixup_alpha=0, cutmix_alpha=0
)


def _finetune_body(info) -> dict:
    torch.manual_seed(0)
    model = create_model("slip_vit_micro")
    train, test = _sets(24, 12)
    metrics, vit = finetune(model, train, test, num_classes=8, config=_DIST_CFG, log=False)
    return {"metrics": metrics, "weights": vit.state_dict()}


@pytest.mark.multiprocess
def test_two_processes_finetune_like_one() -> None:
    """Global batch 8 as 2 x 4 on two gloo ranks vs 8 on one process: the same samples, augmented the same
    way, in every step. Only the float summation order differs (two per-rank means averaged vs one mean),
    about 1e-7 relative in each gradient, which AdamW carries into the weights at the float32 rounding level
    (measured: at most 5e-7, against updates of 4e-3 to 2e-2 per tensor at this learning rate), so 1e-5.
    The exception is the attention's key bias: softmax ignores a constant added to every key, so its true
    gradient is 0 and AdamW normalises rounding noise of the size of its eps into steps (measured: 1.1e-5);
    those entries only get a loose bound."""
    torch.manual_seed(0)
    initial = create_model("slip_vit_micro").visual.state_dict()
    single = _finetune_body(None)
    moved = min((single["weights"][k] - v).abs().max().item() for k, v in initial.items() if k in single["weights"])
    assert moved > 3e-3  # the tolerance is far below how far training moved every tensor
    for r in run_distributed(_finetune_body, 2):
        assert r["weights"].keys() == single["weights"].keys()
        for k, v in single["weights"].items():
            got = r["weights"][k]
            if k.endswith("attn.qkv.bias"):
                q, key, val = got.chunk(3)
                q0, key0, val0 = v.chunk(3)
                torch.testing.assert_close(key, key0, atol=1e-3, rtol=0, msg=k)
                got, v = torch.cat([q, val]), torch.cat([q0, val0])
            torch.testing.assert_close(got, v, atol=1e-5, rtol=0, msg=k)
        assert r["metrics"]["num_samples"] == single["metrics"]["num_samples"] == 12
        assert r["metrics"]["top1"] == pytest.approx(single["metrics"]["top1"])


def test_preset_follows_the_towers_shape_not_the_models_name() -> None:
    from openslip.eval.finetune import preset_for
    from openslip.models import model_config

    for name, preset in [("slip_vit_s16", "vit_s16"), ("CLIP_VITB16", "vit_b16"), ("simclr_vit_l16", "vit_l16"),
                         ("slip_vit_tiny", "demo"), ("slip_vit_micro", "demo")]:  # fmt: skip
        assert preset_for(model_config(name).vision) == preset
