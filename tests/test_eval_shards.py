"""Labelled WebDataset shards as evaluation sets: indexed once, each image read by offset, every sample once."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openslip.cli import main
from openslip.errors import DataError
from openslip.eval.datasets import open_classification


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shards(root: Path, labels_per_shard: list[list[object]], *, as_json: bool = False, mode: str = "w") -> Path:
    """Shards root/test/shard-K.tar; sample i of shard K has pixel value 10 * (index over all shards)."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    n = 0
    for k, labels in enumerate(labels_per_shard):
        suffix = ".tar" if mode == "w" else ".tar.gz"
        with tarfile.open(root / "test" / f"shard-{k}{suffix}", mode) as tar:
            for label in labels:
                key = f"s{n:04d}"
                _add(tar, f"{key}.png", _png(10 * n))
                if as_json:
                    _add(tar, f"{key}.json", json.dumps({"label": label}).encode())
                else:
                    _add(tar, f"{key}.cls", str(label).encode())
                n += 1
    return root / "test"


def test_shards_with_cls_members_and_classnames_file(tmp_path: Path) -> None:
    folder = _shards(tmp_path, [[0, 1, 2], [2, 1]])
    (tmp_path / "classnames.txt").write_text("apple_pie\nbanana\ncherry\n")  # one folder up, as clip-benchmark
    for spec in (str(folder), str(folder / "shard-{0..1}.tar")):
        ds = open_classification(spec, image_size=16)
        assert ds.classnames == ["apple pie", "banana", "cherry"] and list(ds.labels) == [0, 1, 2, 2, 1]
        x, y = ds[3]
        assert x.shape == (3, 16, 16) and y == 2
        # the right image: the pixel value 30 survives the resize and normalisation
        pixels = [float(ds.source.record(i).load_image().getpixel((0, 0))[0]) for i in range(5)]
        assert pixels == [0.0, 10.0, 20.0, 30.0, 40.0]
    # a single .tar, class names from the caller (a catalog order), labels as names in .json
    _shards(tmp_path / "j", [["dog", "cat"]], as_json=True)
    ds = open_classification(str(tmp_path / "j" / "test" / "shard-0.tar"), classnames=["cat", "dog"], image_size=16)
    assert list(ds.labels) == [1, 0]


def test_bad_shards_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="outside"):
        open_classification(str(_shards(tmp_path / "a", [[0, 5]])), classnames=["x", "y"], image_size=16)
    with pytest.raises(DataError, match="uncompressed"):
        open_classification(str(_shards(tmp_path / "b", [[0]], mode="w:gz") / "shard-0.tar.gz"), image_size=16)
    (tmp_path / "c" / "test").mkdir(parents=True)
    with tarfile.open(tmp_path / "c" / "test" / "shard-0.tar", "w") as tar:
        _add(tar, "s0.png", _png(0))
    with pytest.raises(DataError, match="no label"):
        open_classification(str(tmp_path / "c" / "test"), image_size=16)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "broken.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a readable tar"):
        open_classification(str(tmp_path / "d" / "broken.tar"), image_size=16)


def test_zeroshot_cli_on_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _shards(tmp_path, [[0, 1, 0], [1, 1]])
    (folder / "classnames.txt").write_text("red square\nblue circle\n")
    out = tmp_path / "zs.json"
    argv = ["eval", "zeroshot", "--model", "slip_vit_micro", "--pretrained", "none", "--dataset", str(folder)]
    assert main([*argv, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_samples"] == 5 and 0 <= result["top1"] <= 100
