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
