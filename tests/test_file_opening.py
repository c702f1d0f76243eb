"""Every file openslip opens goes through `openslip.files`: a FIFO, a device or a folder where a file belongs is one
line (or a counted skip for a sample's own file), never a hang, and a file over its bound is one line, never a
`MemoryError`. Each command runs under `signal.alarm`: a regression that blocks on a FIFO fails the test (the alarm's
exception interrupts the blocked `open`) instead of hanging the suite."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_utils import overrides, read_metrics

from openslip import files
from openslip.cli import main
from openslip.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

HANG_S = 300  # only catches a hang: each command takes seconds


class Hung(Exception):
    pass


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def fire(signum, frame):
        raise Hung(f"still running after {HANG_S} s: a blocking open or read")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(HANG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _images(folder: Path, n: int, *, captions: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        if captions:
            (folder / f"{i:03d}.txt").write_text(f"a photo number {i}\n")


def _shards(tmp_path: Path) -> Path:
    _images(tmp_path / "src", 16)
    assert main(["data", "make-shards", str(tmp_path / "src"), str(tmp_path / "shards"), "--shard-size", "8"]) == 0
    return tmp_path / "shards"


def _error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith(f"openslip {command}: error:")]
    return line


# ---------------------------------------------------------------------------------------------------------------
# The helper
# ---------------------------------------------------------------------------------------------------------------


def test_the_helper_refuses_what_is_not_a_regular_file_and_bounds_reads(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    cases = [
        (tmp_path / "fifo", "not_a_file", "a FIFO, not a regular file"),
        ("/dev/zero", "not_a_file", "a character device, not a regular file"),
        (tmp_path / "folder", "folder", "a folder, not a regular file"),
        (tmp_path / "missing", "missing", "no such file"),
    ]
    for path, reason, message in cases:
        with pytest.raises(files.FileError) as err:
            files.read_bytes(path, limit=100)
        assert err.value.reason == reason and str(err.value) == f"{path}: {message}"
    with pytest.raises(DataError, match="a FIFO, not a regular file"):  # the caller's kind of error
        files.read_text(tmp_path / "fifo", limit=100, error=DataError)

    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: no disk, and never read
    with pytest.raises(files.FileError, match=r"2,147,483,648 bytes, more than the 100 allowed") as err:
        files.read_bytes(big, limit=100)
    assert err.value.reason == "too_large"
    (tmp_path / "small").write_bytes(b"12345")
    assert files.read_bytes(tmp_path / "small", limit=5) == b"12345"


def test_a_fifo_swapped_in_after_the_stat_is_caught_by_fstat(tmp_path: Path, monkeypatch):
    """The open is non-blocking: a FIFO that appears between the stat and the open does not block it, and the
    fstat after the open refuses it."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"x")
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: real_stat(tmp_path / "file"))
    with pytest.raises(files.FileError, match="a FIFO, not a regular file"):
        files.read_bytes(tmp_path / "fifo", limit=10)


def test_lines_and_json_arrays_are_streamed_with_a_bound():
    lines = list(files.iter_lines(io.StringIO("a\r\nbc\nd"), where="m"))
    assert lines == ["a\r\n", "bc\n", "d"]
    with pytest.raises(files.FileError, match=r"^m:2: a line longer than 10 characters"):
        list(files.iter_lines(io.StringIO("a\n" + "b" * 50), where="m", max_chars=10))

    items = [{"image": f"{i}.jpg", "caption": "x" * i} for i in range(300)] + [1234567890, 2.5, "s", None]
    text = json.dumps(items)

    class Trickle(io.StringIO):  # 7 characters a read: items and numbers are cut at every place
        def read(self, n: int | None = -1) -> str:
            return super().read(7)

    assert list(files.iter_json_array(Trickle(text), where="a")) == items
    assert list(files.iter_json_array(io.StringIO(" [ ] "), where="a")) == []
    for bad in ["", "{}", "[1,]", "[1 2]", "[1] x", '[{"a": 1}']:
        with pytest.raises(files.FileError, match=r"^a: "):
            list(files.iter_json_array(io.StringIO(bad), where="a"))
    with pytest.raises(files.FileError, match="longer than 100 characters"):
        list(files.iter_json_array(io.StringIO(json.dumps(["y" * 500])), where="a", max_chars=100))


# ---------------------------------------------------------------------------------------------------------------
# Shards: a FIFO named *.tar in a shard folder, an index.json naming a FIFO
# ---------------------------------------------------------------------------------------------------------------


def test_a_fifo_named_tar_in_a_shard_folder_is_left_out(tmp_path: Path, capsys):
    shards = _shards(tmp_path)
    (shards / "index.json").unlink()  # no index: the folder's *.tar are globbed
    os.mkfifo(shards / "x.tar")
    for spec in (shards, f"{shards}/*.tar"):
        with pytest.warns(UserWarning, match=r"left out 1 match\(es\) that are not regular files .*x\.tar"):
            assert main(["data", "inspect", str(spec), "--scan", "0"]) == 0
        assert "samples: 16" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="left out 1 match"):
        assert main(["train", *overrides(tmp_path / "run", f"data.train={shards}", "train.steps=2")]) == 0
    assert read_metrics(tmp_path / "run")[-1]["step"] == 2
    assert main(["data", "inspect", str(shards / "x.tar")]) == 2  # named on its own: one line
    assert _error(capsys, "data").endswith("x.tar: a FIFO, not a regular file")


def test_an_index_naming_a_fifo_is_a_counted_bad_shard(tmp_path: Path, capsys):
    shards = _shards(tmp_path)
    (shards / "shard-000001.tar").unlink()
    os.mkfifo(shards / "shard-000001.tar")  # the index still lists it, with its 8 samples
    assert main(["data", "inspect", str(shards), "--scan", "0"]) == 0
    out = capsys.readouterr()
    assert "bad_shard: 1" in out.out and "shard-000001.tar: a FIFO, not a regular file" in out.err
    run = overrides(tmp_path / "run", f"data.train={shards}", "train.steps=2", "data.max_skip_rate=1.0")
    assert main(["train", *run]) == 0
    assert read_metrics(tmp_path / "run")[-1]["data/skip/bad_shard"] >= 1


# ---------------------------------------------------------------------------------------------------------------
# Weights and configs: --model, export, init_from, resume, --config
# ---------------------------------------------------------------------------------------------------------------


def test_a_fifo_as_weights_or_config_is_one_line(tmp_path: Path, capsys):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    assert main(["eval", "zeroshot", "--model", str(fifo), "--dataset", "demo_shapes"]) == 2
    assert _error(capsys, "eval zeroshot").endswith(f"{fifo}: a FIFO, not a regular file")
    assert main(["export", str(fifo), str(tmp_path / "out"), "--format", "hf"]) == 2
    assert "a FIFO, not a regular file" in _error(capsys, "export")
    assert main(["train", *overrides(tmp_path / "a", "data.train=demo", f"init_from={fifo}")]) == 2
    assert "a FIFO, not a regular file" in _error(capsys, "train")
    assert main(["train", *overrides(tmp_path / "b", "data.train=demo", f"resume={fifo}")]) == 2
    _error(capsys, "train")
    config = tmp_path / "config.yaml"
    os.mkfifo(config)
    assert main(["train", "--config", str(config), *overrides(tmp_path / "c", "data.train=demo")]) == 2
    assert _error(capsys, "train").endswith(f"{config}: a FIFO, not a regular file")


def test_an_oversized_config_is_one_line_not_a_memory_error(tmp_path: Path, capsys):
    config = tmp_path / "config.yaml"
    subprocess.run(["truncate", "-s", "2G", str(config)], check=True)  # sparse: no disk, no memory
    assert main(["train", "--config", str(config), *overrides(tmp_path / "run", "data.train=demo")]) == 2
    assert _error(capsys, "train").endswith("2,147,483,648 bytes, more than the 1,048,576 allowed")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# Captions: a sidecar .txt that is a FIFO or a folder is a counted skip, in `data inspect` as in training
# ---------------------------------------------------------------------------------------------------------------


def test_a_caption_that_is_a_fifo_or_a_folder_is_a_counted_skip(tmp_path: Path, capsys):
    folder = tmp_path / "photos"
    _images(folder, 16)
    (folder / "003.txt").unlink()
    os.mkfifo(folder / "003.txt")
    (folder / "004.txt").unlink()
    (folder / "004.txt").mkdir()
    assert main(["data", "inspect", str(folder), "--scan", "0"]) == 0
    out = capsys.readouterr().out
    assert "scanned: 16 samples" in out and "not_a_file: 1" in out and "unreadable_file: 1" in out
    assert main(["train", *overrides(tmp_path / "run", f"data.train={folder}", "train.steps=2")]) == 0
    last = read_metrics(tmp_path / "run")[-1]
    assert last["data/skip/not_a_file"] >= 1 and last["data/skip/unreadable_file"] >= 1


# ---------------------------------------------------------------------------------------------------------------
# Manifests: a FIFO, a device, an endless line; streamed, not read whole
# ---------------------------------------------------------------------------------------------------------------


def test_a_manifest_that_is_a_fifo_or_a_device_is_one_line(tmp_path: Path, capsys):
    os.mkfifo(tmp_path / "train.csv")
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")  # a device behind a manifest's name
    for manifest, kind in ((tmp_path / "train.csv", "a FIFO"), (tmp_path / "zero.jsonl", "a character device")):
        assert main(["data", "inspect", str(manifest)]) == 2
        assert _error(capsys, "data").endswith(f"{manifest}: {kind}, not a regular file")
        assert main(["train", *overrides(tmp_path / "run", f"data.train={manifest}")]) == 2
        assert _error(capsys, "train").endswith(f"{kind}, not a regular file")
    assert main(["data", "inspect", "csv:/dev/zero"]) == 2
    assert _error(capsys, "data").endswith("/dev/zero: a character device, not a regular file")


@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.json"])
def test_a_huge_manifest_without_newlines_is_one_line(tmp_path: Path, capsys, name: str):
    """2 GB of NUL bytes (sparse): read line by line (or item by item) with a bound, never whole."""
    manifest = tmp_path / name
    subprocess.run(["truncate", "-s", "2G", str(manifest)], check=True)
    assert main(["data", "inspect", str(manifest)]) == 2
    line = _error(capsys, "data")
    assert str(manifest) in line and ("longer than" in line or "more than" in line), line


def test_manifests_stream_rows_and_json_arrays(tmp_path: Path, capsys):
    _images(tmp_path, 4, captions=False)
    rows = [{"image": f"{i:03d}.png", "caption": f"photo {i}"} for i in range(4)]
    (tmp_path / "m.json").write_text(json.dumps(rows, indent=1))
    assert main(["data", "inspect", str(tmp_path / "m.json"), "--scan", "0"]) == 0
    assert "samples: 4" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps(rows)[:-2])  # the array is cut short
    assert main(["data", "inspect", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: item 3" in _error(capsys, "data")


def test_manifest_memory_does_not_grow_with_a_huge_line(tmp_path: Path):
    """A 2 GB single-line CSV (sparse) costs a bounded line, not the file: under a 1.5 GB address-space limit
    above the interpreter's own, `data inspect` ends in its one line."""
    manifest = tmp_path / "train.csv"
    with open(manifest, "wb") as f:
        f.write(b"image,caption\n")
        f.truncate(2 * 1024**3)
    code = (
        "import resource, sys\n"
        "from openslip.cli import main\n"
        "import torch, PIL.Image\n"  # loaded before the limit: the limit bounds what reading the manifest costs
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + 1536 * 1024**2, resource.RLIM_INFINITY))\n"
        "sys.exit(main(['data', 'inspect', sys.argv[1]]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "MemoryError" not in proc.stderr and "a line longer than" in proc.stderr.splitlines()[-1]


def test_a_manifest_index_is_packed_as_read_and_out_of_memory_is_one_line(tmp_path: Path, capsys, monkeypatch):
    """Rows go straight into the packed tables (no list of strings beside them); a manifest whose index does not
    fit in memory is one line naming the rows read and the way on (shards), not a MemoryError traceback."""
    from openslip.data.formats import records

    table = records.StringTable(["a", "", "dé\udcff", "b" * 10])
    assert list(table) == ["a", "", "dé\udcff", "b" * 10]
    assert not table._data.flags.writeable and not table._offsets.flags.writeable
    _images(tmp_path, 4, captions=False)
    (tmp_path / "m.csv").write_text("image,caption\n" + "".join(f"{i:03d}.png,photo {i}\n" for i in range(4)))
    real = records.StringTableBuilder.append

    def append(self, s):  # the third row's text no longer fits
        if len(self) == 2:
            raise MemoryError
        real(self, s)

    monkeypatch.setattr(records.StringTableBuilder, "append", append)
    assert main(["data", "inspect", str(tmp_path / "m.csv")]) == 2
    line = _error(capsys, "data")
    assert "does not fit in memory after 2 rows" in line and "make-shards" in line, line
