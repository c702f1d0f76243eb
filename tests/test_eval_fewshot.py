"""`openslip eval fewshot`: the closed-form ridge probe against a naive float64 least-squares solve, its draws, the
command on a demo task (table, JSON, outcomes that give back the score), its bad inputs (one line, exit 2), and the
registered evaluation as training's `eval.sets` and compare read it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openslip.cli import main
from openslip.eval.fewshot import FewShotConfig, draw_shots, fewshot_probe, ridge_fit, ridge_scores
from openslip.eval.stats import score
from openslip.eval.suite import EVALS, EvalOptions, open_eval_set
from openslip.models import create_model, model_config

pytestmark = pytest.mark.usefixtures("one_thread")
RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none"]


def _lstsq_ridge(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float) -> torch.Tensor:
    """The same ridge as an ordinary least-squares problem, solved by torch.linalg.lstsq in float64: the rows
    [A; sqrt(λ) I] against [Y; 0] (A: unit-norm features and a 1), whose minimiser is (AᵀA + λI)⁻¹AᵀY."""
    a = torch.nn.functional.normalize(x.double(), dim=1)
    a = torch.cat([a, torch.ones(len(a), 1, dtype=torch.float64)], dim=1)
    d = a.shape[1]
    stacked = torch.cat([a, l2**0.5 * torch.eye(d, dtype=torch.float64)])
    targets = torch.cat([torch.eye(num_classes, dtype=torch.float64)[y], torch.zeros(d, num_classes).double()])
    return torch.linalg.lstsq(stacked, targets).solution


@pytest.mark.parametrize(("n", "d", "l2"), [(12, 40, 1.0), (300, 16, 1.0), (50, 50, 0.01), (8, 64, 10.0)])
def test_closed_form_equals_lstsq(n: int, d: int, l2: float) -> None:
    """Both branches of the closed form (n < d + 1: the n x n system; else the d x d one) against lstsq."""
    g = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    w = ridge_fit(x, y, 4, l2)
    reference = _lstsq_ridge(x, y, 4, l2)
    # Both are float64 solves of a system whose condition number is at most (n + λ) / λ (unit-norm rows, the 1
    # column: eigenvalues of AᵀA lie in [0, 2n]); 1e-9 is far above the rounding of either and far below any
    # real difference (the weights are O(1)).
    assert (w - reference).abs().max().item() < 1e-9
    x_test = torch.randn(7, d, generator=g)
    assert torch.allclose(ridge_scores(w, x_test), ridge_scores(reference, x_test), atol=1e-9, rtol=0)


def test_draws_are_nested_seeded_and_per_class() -> None:
    labels = np.arange(60) % 3
    one, five = draw_shots(labels, 3, 1, (0, 0)), draw_shots(labels, 3, 5, (0, 0))
    assert set(one) <= set(five) and len(five) == 15
    assert np.array_equal(np.bincount(labels[five]), [5, 5, 5])
    assert np.array_equal(five, draw_shots(labels, 3, 5, (0, 0)))
    assert not np.array_equal(five, draw_shots(labels, 3, 5, (0, 1)))


def test_outcomes_give_back_the_mean_over_seeds() -> None:
    """compare recomputes every score from the saved outcomes: the headline k's, pooled over seeds."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    train_y, test_y = torch.arange(40) % 4, torch.arange(20) % 4
    train_x = centres[train_y] + torch.randn(40, 16, generator=g)
    test_x = centres[test_y] + torch.randn(20, 16, generator=g)
    cfg = FewShotConfig(shots=(1, 3), seeds=3)
    names = ["a", "b", "c", "d"]
    metrics, outcomes = fewshot_probe(train_x, train_y, test_x, test_y, classnames=names, metric="top1", config=cfg)
    assert metrics["score"] == metrics["3shot"] == pytest.approx(np.mean(metrics["3shot_seeds"]))
    assert score(outcomes, "top1") == pytest.approx(metrics["score"])
    assert len(outcomes["labels"]) == 3 * 20
    assert metrics["3shot_std"] == pytest.approx(np.std(metrics["3shot_seeds"], ddof=1))


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fewshot_on_a_demo_task(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fewshot.json"
    argv = ["eval", "fewshot", *RANDOM, "--dataset", "demo_shapes", "-n", "32", "--num-train", "64"]
    code, stdout, err = _run([*argv, "--shots", "1,2,4", "--seeds", "2", "--output", str(out)], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("few-shot ridge (l2 1, backbone features, 2 seed(s)) demo_shapes: 8 classes")
    assert [line.split()[0] for line in lines[3:6]] == ["1", "2", "4"] and lines[5].endswith("<- reported")
    metrics = json.loads(out.read_text())
    assert metrics["metric"] == "top1" and metrics["shots"] == 4 and metrics["score"] == metrics["4shot"]
    assert len(metrics["1shot_seeds"]) == 2 and metrics["seeds"] == 2 and metrics["num_samples"] == 32
    assert all(0 <= metrics[f"{k}shot"] <= 100 for k in (1, 2, 4))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shots", "0,5"], "shots should be positive integers"),
        (["--shots", "1,x"], "--shots should be positive integers separated by commas"),
        (["--shots", "-1"], "--shots should be positive integers separated by commas"),
        (["--seeds", "0"], "--seeds should be a positive integer"),
        (["--shots", "1,9"], "fewshot: 9-shot needs 9 train images of every class, but 8 of 8 classes have fewer"),
        (["fewshot_l2=0"], "fewshot_l2=0 should be > 0"),
        (["--shots", "2", "fewshot_shots=[3]"], "fewshot_shots is given twice"),
    ],
)
def test_bad_inputs_are_one_line(extra: list[str], message: str, capsys) -> None:
    argv = ["eval", "fewshot", *RANDOM, "--dataset", "demo_shapes", "-n", "8", "--num-train", "64", *extra]
    code, _, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_registered_for_training_and_compare(tmp_path: Path, capsys) -> None:
    """`eval.sets=[fewshot:SET]` in training reports fewshot/NAME; a set too small for the default shots is an
    evaluation that does not apply (compare's "—", training's one line before the first step)."""
    model_cfg = model_config("slip_vit_micro")
    small = open_eval_set("demo_shapes", image_size=32, num_test=8, num_train=64)
    assert "25-shot needs 25 train images" in EVALS.get("fewshot").why_not(model_cfg, small)
    es = open_eval_set("demo_shapes", image_size=32, num_test=16, num_train=200)
    assert EVALS.get("fewshot").why_not(model_cfg, es) is None
    torch.manual_seed(0)
    result = EVALS.get("fewshot").run(create_model("slip_vit_micro"), es, EvalOptions(fewshot_seeds=2))
    assert result.metrics["shots"] == 25 and score(result.outcomes, "top1") == pytest.approx(result.metrics["score"])

    run = tmp_path / "run"
    argv = ["train", "model=slip_vit_micro", "train.batch_size=8", "data.num_workers=0", "optim.warmup_steps=1",
            "train.steps=1", "eval.samples=16", "eval.train_samples=200", "eval.sets=[fewshot:demo_shapes]",
            f"out_dir={run}"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(0 <= r.get("fewshot/demo_shapes", -1) <= 100 for r in records)
    bad = [a if not a.startswith("eval.train_samples") else "eval.train_samples=64" for a in argv]
    assert main([*bad[:-1], f"out_dir={tmp_path / 'bad'}"]) == 2
    assert "fewshot does not apply: 25-shot needs 25 train images" in capsys.readouterr().err
