"""`openslip eval TASK ... key=value`: the evaluation's options (`openslip.eval.suite.EvalOptions`) as overrides,
the same fields the options write; bad keys and values are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openslip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
RANDOM = ["--model", "slip_vit_micro", "--pretrained", "none"]
SMALL = ["--dataset", "demo_shapes", "-n", "16"]
PROBE = [*SMALL, "--num-train", "32"]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.filterwarnings("ignore:.*the text tower was never trained:UserWarning")
@pytest.mark.parametrize(
    ("task", "extra", "override", "check"),
    [
        ("zeroshot", SMALL, "batch_size=4", lambda m, out: m["num_samples"] == 16),
        ("retrieval", ["--dataset", "demo", "-n", "12"], "seed=1", lambda m, out: m["num_images"] == 12),
        ("knn", PROBE, "knn_k=10", lambda m, out: m["k"] == 10 and "kNN (k=10," in out),
        ("linear", PROBE, "linear_protocol=sgd", lambda m, out: "linear probe (sgd, 1 epochs" in out),
    ],
)
def test_each_eval_command_takes_an_override(task, extra, override, check, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.json"
    sgd = ["linear_epochs=1", "linear_batch_size=16"] if task == "linear" else []
    code, stdout, _ = _run(["eval", task, *RANDOM, *extra, *sgd, override, "--output", str(out)], capsys)
    assert code == 0 and check(json.loads(out.read_text()), stdout)


def test_override_and_option_write_the_same_field(tmp_path: Path, capsys) -> None:
    """`--seed 1` and `seed=1` (a common option) give the same result; giving both is refused."""
    results = []
    for setting in (["--seed", "1"], ["seed=1"]):
        out = tmp_path / "k.json"
        assert _run(["eval", "knn", *RANDOM, *PROBE, *setting, "--output", str(out)], capsys)[0] == 0
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]
    code, _, err = _run(["eval", "knn", *RANDOM, *PROBE, "--seed", "1", "seed=1"], capsys)
    assert code == 2 and "seed is given twice" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "knn", *RANDOM, *PROBE, "knn_q=10"], "unknown key 'knn_q' for eval knn; valid keys: device,"),
        # a key of another evaluation is not read by this one: refused, not ignored
        (["eval", "zeroshot", *RANDOM, *SMALL, "knn_k=10"], "unknown key 'knn_k' for eval zeroshot"),
        (["eval", "knn", *RANDOM, *PROBE, "knn_k=ten"], "knn_k='ten' should be of type int"),
        (["eval", "linear", *RANDOM, *PROBE, "features=cls"], "features='cls' is not valid; choose one of: backbone"),
        (["eval", "retrieval", *RANDOM, "--dataset", "demo", "batch_size"], "should look like key.path=value"),
        (["eval", "knn", *RANDOM, *PROBE, "seed=1", "seed=2"], "seed is given twice"),
        (["eval", "knn", *RANDOM, *PROBE, "--knn-k", "3"], "unrecognized option --knn-k: settings are key=value"),
    ],
)
def test_bad_overrides_are_one_line_exit_2(argv: list[str], message: str, capsys) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("task", "option", "override"),
    [
        ("knn", ["--k", "10"], "knn_k=10"),
        ("knn", ["--temperature=0.5"], "knn_temperature=0.5"),
        ("linear", ["--protocol", "sgd"], "linear_protocol=sgd"),
        ("linear", ["--epochs", "3"], "linear_epochs=3"),
        ("linear", ["--lr", "0.2"], "linear_lr=0.2"),
        ("linear", ["--train-batch-size", "64"], "linear_batch_size=64"),
        ("linear", ["--eval-every", "1"], "linear_eval_every=1"),
        ("linear", ["--report", "final"], "linear_report=final"),
        ("linear", ["--reference-lr-bug", "8"], "linear_reference_lr_bug=8"),
        # without a value it meant this run's process count: the key's 0
        ("linear", ["--reference-lr-bug"], "linear_reference_lr_bug=0"),
    ],
)
def test_removed_options_name_their_key(task: str, option: list[str], override: str, capsys) -> None:
    """The options that only restated an EvalOptions field are refused in one line that names the key."""
    code, _, err = _run(["eval", task, "--model", "no/such/run", *PROBE, *option], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"openslip eval {task}: error: unrecognized option {option[0].partition('=')[0]}: settings are key=value "
        f"overrides; write `{override}`"
    )


@pytest.mark.parametrize(("task", "option"), [("knn", "--epochs"), ("zeroshot", "--k"), ("retrieval", "--protocol")])
def test_a_removed_option_of_another_task_is_not_offered(task: str, option: str, capsys) -> None:
    """The per-task keys hold: `eval knn --epochs 3` names no key knn does not read (argparse's own error)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", task, "--model", "no/such/run", "--dataset", "demo_shapes", option, "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"unrecognized arguments: {option}" in err and "write `" not in err
