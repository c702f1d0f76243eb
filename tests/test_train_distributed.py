"""2 gloo processes x batch 8 train exactly like 1 process x batch 16 (the losses see the global batch)."""

import pytest
from dist_utils import run_distributed
from train_utils import assert_weights_close, final_weights, overrides, read_metrics

from openslip.overrides import parse_overrides
from openslip.train import train
from openslip.train.recipes import make_config

STEPS = 5
# Early Adam steps are ~lr * sign(g): gradient elements that are zero up to float noise (biases in front
# of BatchNorm, key biases) flip sign between the two float orders and move by ~lr. A small lr keeps that
# drift below the 1e-5 loss tolerance; the loss itself is exact (see test_distributed_loss.py).
LR = ("optim.lr=1e-4",)


def _train(info, out_dir):
    summary = train(make_config(parse_overrides(overrides(out_dir, f"train.steps={STEPS}", *LR))))
    return {"rank": info.rank, "steps": summary["steps"]}


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
    train(make_config(parse_overrides(overrides(tmp_path / "one", f"train.steps={STEPS}", *LR))))
    results = run_distributed(_train, 2, str(tmp_path / "two"), timeout_s=300)
    assert [r["steps"] for r in results] == [STEPS, STEPS]
    one = read_metrics(tmp_path / "one")
    two = read_metrics(tmp_path / "two")  # rank 0 logs the mean over ranks
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "clip_loss", "ssl_loss"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    assert_weights_close(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), lr=1e-4)
