"""`openslip finetune ... key=value`: the hyper-parameters are overrides of the preset's FinetuneConfig, as
`openslip train` takes its settings; the options it once had for them are refused naming the override."""

from __future__ import annotations

import pytest

import openslip.eval.finetune as ft
from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
RANDOM = ["finetune", "--model", "slip_vit_micro", "--pretrained", "none", "--dataset", "demo_shapes", "-n", "8"]
RANDOM += ["--num-train", "16"]


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[ft.FinetuneConfig]:
    """The config the command hands to `finetune` (which then returns at once)."""
    configs: list[ft.FinetuneConfig] = []

    def fake(model, train, test, *, config, **kwargs):
        configs.append(config)
        return {"metric": "top1", "score": 50.0, "top1": 50.0}, None

    monkeypatch.setattr(ft, "finetune", fake)
    return configs


def test_overrides_change_the_presets_fields(seen: list[ft.FinetuneConfig], capsys) -> None:
    argv = [*RANDOM, "--preset", "demo", "epochs=2", "base_lr=1e-3", "batch_size=8", "crop_scale=[0.5, 1]"]
    argv += ["randaug=rand-m9-mstd0.5-inc1", "flip=true", "precision=bf16", "seed=3"]
    assert main(argv) == 0, capsys.readouterr().err
    (cfg,) = seen
    assert (cfg.epochs, cfg.base_lr, cfg.batch_size, cfg.crop_scale) == (2, 1e-3, 8, (0.5, 1.0))
    assert (cfg.randaug, cfg.flip, cfg.precision, cfg.seed) == ("rand-m9-mstd0.5-inc1", True, "bf16", 3)
    demo = ft.PRESETS["demo"]  # the fields not given keep the preset's values
    assert (cfg.warmup_epochs, cfg.layer_decay, cfg.mixup_alpha) == (demo.warmup_epochs, demo.layer_decay, 0.0)
    assert main([*RANDOM, "randaug=null"]) == 0  # the micro model's preset (demo), RandAugment off
    assert seen[-1].randaug is None and seen[-1].epochs == demo.epochs


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["lr=1e-3"], "unknown key 'lr'; valid keys: epochs, warmup_epochs, batch_size, base_lr"),
        (["epochs=two"], "epochs='two' should be of type int"),
        (["crop_scale=[0.5]"], "crop_scale=[0.5] should have 2 items"),
        (["reprob=2"], "reprob must be a probability in [0, 1], got 2.0"),
        (["precision=fp64"], "finetune: precision 'fp64'; choose one of: fp32, bf16, fp16"),
        (["epochs=2", "epochs=3"], "epochs is given twice"),
        (["epochs"], "override 'epochs' should look like key.path=value"),
    ],
)
def test_bad_settings_fail_in_one_line_before_the_model_loads(settings: list[str], message: str, capsys) -> None:
    argv = ["finetune", "--model", "no/such/run", "--dataset", "demo_shapes", *settings]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openslip finetune: error: ") and message in err[0], err


@pytest.mark.parametrize(
    ("options", "override"),
    [
        (["--epochs", "3"], "epochs=3"),
        (["--warmup-epochs", "0"], "warmup_epochs=0"),
        (["--train-batch-size", "32"], "batch_size=32"),
        (["--lr=1e-2"], "base_lr=1e-2"),
        (["--mixup", "0.2"], "mixup_alpha=0.2"),
        (["--cutmix", "0"], "cutmix_alpha=0"),
        (["--randaug", "none"], "randaug=none"),
        (["--precision", "bf16"], "precision=bf16"),
        (["--seed", "1"], "seed=1"),
        # its --batch-size (eval's images per forward pass) was read by nothing: the one batch is the settings'
        (["--batch-size", "64"], "batch_size=64"),
    ],
)
def test_options_that_became_overrides_name_them(options: list[str], override: str, capsys) -> None:
    assert main([*RANDOM, *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"settings are key=value overrides; write `{override}`" in err[0], err
