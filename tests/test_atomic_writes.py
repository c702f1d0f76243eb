"""One helper writes every file whole or not at all (openslip/weights/atomic.py): a failed write, whatever raised,
leaves the old file as it was and no temporary file beside it; a temporary file a killed writer left does not make
its folder foreign to the command that wrote it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from PIL import Image

from openslip.cli import main
from openslip.weights import atomic

OLD = b"the previous version\n"


def _fail_write_bytes(path: Path) -> None:
    atomic.write_bytes(path, "text, not bytes")  # type: ignore[arg-type]  # f.write raises TypeError


def _fail_atomic_file(path: Path) -> None:
    with atomic.atomic_file(path, "w", encoding="utf-8") as f:
        f.write("half of the new ")
        raise RuntimeError("the writer failed")


def _fail_atomic_path(path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # a Ctrl-C cleans up too


@pytest.mark.parametrize("fail", [_fail_write_bytes, _fail_atomic_file, _fail_atomic_path])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, fail):
    target = tmp_path / "file.json"
    target.write_bytes(OLD)
    with pytest.raises((TypeError, RuntimeError, KeyboardInterrupt)):
        fail(target)
    assert target.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "new" / "file.txt"  # the folder is created
    atomic.write_bytes(target, OLD)
    with atomic.atomic_file(target, "w", encoding="utf-8") as f:
        f.write("new\n")
    assert target.read_text() == "new\n" and [p.name for p in target.parent.iterdir()] == ["file.txt"]
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        atomic.atomic_file(target, "a").__enter__()


def test_the_helper_imports_nothing_above_the_core():
    """data/ writes through it, so it may import the standard library, numpy and openslip's core modules only
    (no torch, nothing of weights/, models/, data/, ...)."""
    tree = ast.parse(Path(atomic.__file__).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    outside = {name for name in names if name.split(".")[0] not in sys.stdlib_module_names}
    assert {name for name in outside if name.count(".") != 1 or not name.startswith("openslip.")} == {"numpy"}, names
    for name in outside - {"numpy"}:  # openslip.X: a module of the core, not a package
        assert (Path(atomic.__file__).parents[1] / f"{name.split('.')[1]}.py").is_file(), name


def test_make_shards_reruns_over_a_killed_writers_temporary_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (60 * i, 90, 200)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"square {i}")
    out = tmp_path / "shards"
    out.mkdir()
    (out / ".shard-000000.tar.tmp4242").write_bytes(b"half a shard")  # what a kill mid-shard leaves
    assert main(["data", "make-shards", str(images), str(out), "--shard-size", "2"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["index.json", "shard-000000.tar", "shard-000001.tar"]
