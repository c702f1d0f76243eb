"""`openslip --version`, the optional Weights & Biases logger (a stand-in module: no network), and remote data
that cannot be reached failing within seconds."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import openslip
from openslip.cli import main
from openslip.data.formats.shards import REACH_TIMEOUT_S

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["model=slip_vit_micro", "train.batch_size=8", "data.num_workers=0", "data.image_size=32", "eval.sets=[]",
         "optim.warmup_steps=1", "train.log_every=1", "train.steps=2"]  # fmt: skip


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"openslip {openslip.__version__}"


class _FakeRun:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def log(self, values: dict, step: int) -> None:
        self.calls.append(("log", step, dict(values)))

    def finish(self) -> None:
        self.calls.append(("finish",))


def _fake_wandb(calls: list) -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.util = types.SimpleNamespace(generate_id=lambda: "run123")
    module.init = lambda **kw: (calls.append(("init", kw)), _FakeRun(calls))[1]
    module.__spec__ = types.SimpleNamespace(name="wandb")  # find_spec needs one
    return module


def test_wandb_logs_what_metrics_jsonl_holds(tmp_path: Path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "wandb" else None)
    run = tmp_path / "run"
    assert main(["train", *SMALL, "train.wandb=true", "train.wandb_project=demo", f"out_dir={run}"]) == 0
    init = calls[0][1]
    assert init["project"] == "demo" and init["name"] == "run" and init["id"] == "run123" and init["resume"] == "allow"
    logged = [c for c in calls if c[0] == "log"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [c[1] for c in logged] == [r["step"] for r in records]
    assert logged[0][2]["loss"] == pytest.approx(records[0]["loss"])
    assert calls[-1] == ("finish",) and (run / "wandb_id").read_text().strip() == "run123"


def test_wandb_without_the_package_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert main(["train", *SMALL, "train.wandb=true", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install wandb" in err


def test_unreachable_remote_shards_fail_within_seconds(tmp_path: Path, capsys) -> None:
    code = main(["train", *SMALL, "data.train=http://127.0.0.1:9/shard-{000..003}.tar", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot reach it" in err
    assert REACH_TIMEOUT_S <= 10  # one probe with a short timeout, not the reader's retries (no timed assertion)


def test_slurm_example_is_valid_bash_and_its_train_arguments_parse() -> None:
    import shlex
    import subprocess

    from openslip.overrides import parse_overrides
    from openslip.train.recipes import RECIPES, make_config

    script = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "scontrol show hostnames" in text and "$SLURM_NNODES" in text and "--signal=B:TERM" in text
    args = shlex.split(text.split("-m openslip.cli train", 1)[1].split("&", 1)[0].replace("\\\n", " "))
    values = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args}
    assert values["recipe"] in RECIPES
    overrides = [a.replace("$SHARDS", "/shared/s-{0..1}.tar").replace("$OUT_DIR", "/shared/run") for a in args]
    cfg = make_config(parse_overrides(overrides))
    assert cfg.model == "slip_vit_b16" and cfg.train.batch_size == 4096 and cfg.out_dir == "/shared/run"
