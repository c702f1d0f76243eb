"""train.compile: true / false / auto (on for CUDA, off for CPU), and the lasting compile cache."""

from __future__ import annotations

import pytest
import torch
from train_utils import overrides

import openslip.train.loop as loop
from openslip.cli import main
from openslip.train.compiling import CACHE_ENV, keep_compiled_kernels, use_compile


def test_auto_compiles_on_cuda_only() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_compile("auto", cuda) and not use_compile("auto", cpu)
    assert use_compile(True, cpu) and not use_compile(False, cuda)


def _record_compiles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    compiled: list[object] = []

    def fake_compile(module, *args, **kwargs):  # the step runs eagerly: inductor on a CPU takes minutes
        compiled.append(module)
        return module

    monkeypatch.setattr(loop.torch, "compile", fake_compile)
    return compiled


def test_compile_setting_through_the_cli(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _record_compiles(monkeypatch)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["train", *overrides(tmp_path / "auto", "train.compile=auto", "train.steps=1")]) == 0
    assert compiled == []  # auto on a CPU: not compiled
    assert main(["train", *overrides(tmp_path / "on", "train.compile=true", "train.steps=1")]) == 0
    assert len(compiled) == 1
    # the compiled kernels go to a lasting directory, not /tmp/torchinductor_$USER
    import os

    assert os.environ[CACHE_ENV] == str(tmp_path / "cache" / "openslip" / "torch-compile")


def test_compile_cache_respects_the_users_directory(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert keep_compiled_kernels() == tmp_path / "mine"
    import os

    assert os.environ[CACHE_ENV] == str(tmp_path / "mine")


@pytest.mark.parametrize("value", ["maybe", "1"])
def test_compile_other_values_are_one_line_errors(tmp_path, value: str, capsys) -> None:
    assert main(["train", *overrides(tmp_path / "run", f"train.compile={value}", "train.steps=1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.compile" in err and "true, false, auto" in err


def test_compile_mode_reaches_torch_compile_and_graph_steps_are_marked(tmp_path, monkeypatch) -> None:
    """train.compile_mode is torch.compile's mode; under CUDA graphs (reduce-overhead) each step tells torch that a
    new iteration begins (the graphs' outputs of the last one may then be overwritten)."""
    modes: list[object] = []
    monkeypatch.setattr(loop.torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    marks: list[int] = []
    monkeypatch.setattr(loop, "new_graph_step", lambda: marks.append(1))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = ("train.compile=true", "train.steps=3", "ckpt.every_steps=100")
    assert main(["train", *overrides(tmp_path / "default", *run)]) == 0
    assert modes == [None] and marks == []
    assert main(["train", *overrides(tmp_path / "graphs", *run, "train.compile_mode=reduce-overhead")]) == 0
    assert modes == [None, "reduce-overhead"] and len(marks) == 3


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (["train.compile_mode=fast"], "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
        (["train.compile_mode=reduce-overhead"], "needs train.compile=true or auto"),
    ],
)
def test_compile_mode_errors_are_one_line(tmp_path, settings: list[str], words: str, capsys) -> None:
    assert main(["train", *overrides(tmp_path / "run", *settings, "train.steps=1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.compile_mode" in err and words in err, err
