"""Every objective trains through `openslip train`, and the pipeline produces only what it reads.

The rule: docs/DESIGN.md, 'Work follows the objective'.

The CLIP and SimCLR baselines once crashed at step 1 while tests that fed the model hand-filtered inputs
stayed green; so these tests go through the CLI entry point and look at what the model was given.
"""

import math

import pytest
from dist_utils import run_distributed
from train_utils import assert_resumes_bit_exactly, assert_weights_close, final_weights, overrides, read_metrics

from openslip.cli import main
from openslip.models import SLIP
from openslip.overrides import parse_overrides
from openslip.train import train
from openslip.train.recipes import make_config

# objective -> (overrides, views the model must receive, loss terms it must log)
OBJECTIVES = {
    "clip": (["model=clip_vit_micro", "loss.ssl_scale=0"], {"image", "text"}, {"clip_loss"}),
    "simclr": (["model=simclr_vit_micro", "loss.clip_scale=0"], {"view1", "view2"}, {"ssl_loss"}),
    "slip": (["model=slip_vit_micro"], {"image", "text", "view1", "view2"}, {"clip_loss", "ssl_loss"}),
    "clip_aug": (
        ["model=clip_vit_micro", "loss.ssl_scale=0", "data.image_view=simclr"],
        {"image", "text"},
        {"clip_loss"},
    ),
    # SigLIP's sigmoid image-text loss (docs/OBJECTIVES.md): the term keeps the key clip_loss
    "siglip": (
        ["model=clip_vit_micro", "loss.ssl_scale=0", "loss.contrastive=sigmoid"],
        {"image", "text"},
        {"clip_loss"},
    ),
    "slip_sigmoid": (
        ["model=slip_vit_micro", "loss.contrastive=sigmoid"],
        {"image", "text", "view1", "view2"},
        {"clip_loss", "ssl_loss"},
    ),
    # self-distillation in place of SimCLR (docs/OBJECTIVES.md): the student also gets the local crops
    "clip_distill": (
        ["model=slip_vit_micro", "loss.ssl=distill", "loss.local_crops=2"],
        {"image", "text", "view1", "view2", "local"},
        {"clip_loss", "ssl_loss"},
    ),
    "siglip_distill": (
        ["model=slip_vit_micro", "loss.ssl=distill", "loss.local_crops=2", "loss.contrastive=sigmoid"],
        {"image", "text", "view1", "view2", "local"},
        {"clip_loss", "ssl_loss"},
    ),
}


@pytest.fixture
def model_inputs(monkeypatch):
    """The keyword arguments of every `forward_features` call (what the ViT and text tower are run on)."""
    seen: list[set[str]] = []
    real = SLIP.forward_features

    def spy(self, **kwargs):
        seen.append({k for k, v in kwargs.items() if v is not None})
        return real(self, **kwargs)

    monkeypatch.setattr(SLIP, "forward_features", spy)
    return seen


@pytest.mark.parametrize("augment", ["cpu", "device"])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_trains_from_the_cli_on_only_its_inputs(tmp_path, model_inputs, objective, augment):
    args, views, terms = OBJECTIVES[objective]
    extra = [*args, "train.steps=2", f"data.augment={augment}", "eval.sets=[zeroshot:demo_colours]", "eval.samples=16"]
    assert main(["train", *overrides(tmp_path, *extra)]) == 0
    assert model_inputs and all(call == views for call in model_inputs), model_inputs
    last = {k: v for row in read_metrics(tmp_path) if row["step"] == 2 for k, v in row.items()}
    assert {k for k in last if k.endswith("_loss")} == terms
    assert ("zeroshot/demo_colours" in last) == ("text" in views)  # SimCLR has no text tower: no zero-shot
    assert all(math.isfinite(last[k]) for k in terms)
    # the sigmoid loss's learned bias is logged and saved, starting from SigLIP's -10; a softmax model has none
    sigmoid = "loss.contrastive=sigmoid" in args
    assert ("logit_bias" in last) == sigmoid and ("logit_bias" in final_weights(tmp_path)) == sigmoid
    if sigmoid:
        assert last["logit_bias"] != -10.0 and abs(last["logit_bias"] + 10.0) < 0.1


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_accumulates_exactly(tmp_path, objective):
    args = OBJECTIVES[objective][0]
    assert main(["train", *overrides(tmp_path / "one", *args, "train.steps=3")]) == 0
    assert main(["train", *overrides(tmp_path / "acc", *args, "train.steps=3", "train.accum_steps=4")]) == 0
    one, acc = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "acc")
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in acc], rel=1e-4)
    assert_weights_close(final_weights(tmp_path / "one"), final_weights(tmp_path / "acc"))


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_every_objective_resumes_bit_exactly(tmp_path, objective):
    """A run resumed from its step-2 checkpoint ends with the weights of the uninterrupted run."""
    args = [*OBJECTIVES[objective][0], "train.steps=4", "ckpt.every_steps=2", "ckpt.keep_last=5"]
    assert_resumes_bit_exactly(tmp_path / "run", args)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model=slip_vit_micro", "loss.ssl_scale=0"], "use model=clip_vit_micro"),
        (["model=slip_vit_micro", "loss.clip_scale=0"], "use model=simclr_vit_micro"),
        (["model=simclr_vit_micro", "loss.clip_scale=0", "data.image_view=sharp"], "choose one of: clip, simclr"),
    ],
)
def test_a_model_part_no_loss_trains_is_refused(tmp_path, capsys, args, needle):
    assert main(["train", f"out_dir={tmp_path}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def _train_two_ranks(info, out_dir, args):
    summary = train(make_config(parse_overrides(overrides(out_dir, *args))))
    return {"steps": summary["steps"]}


@pytest.mark.multiprocess
@pytest.mark.parametrize("objective", ["clip", "simclr"])
def test_baselines_on_two_processes_match_one(tmp_path, objective):
    """DDP over 2 gloo ranks: no unused-parameter error, and the losses of one process on the whole batch."""
    args = [*OBJECTIVES[objective][0], "train.steps=3", "optim.lr=1e-4"]
    train(make_config(parse_overrides(overrides(tmp_path / "one", *args))))
    results = run_distributed(_train_two_ranks, 2, str(tmp_path / "two"), args, timeout_s=300)
    assert [r["steps"] for r in results] == [3, 3]
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("model", ["slip_vit_micro", "clip_vit_micro", "simclr_vit_micro"])
def test_bench_train_accepts_every_model(tmp_path, model):
    argv = ["bench", "train", "--model", model, "train.batch_size=4", "--steps", "1", "--warmup", "0"]
    argv += ["--with-data", "data.num_workers=0", "--peak-budget", "0.1", "train.threads=1"]
    assert main([*argv, "--output", str(tmp_path / "b.json")]) == 0
