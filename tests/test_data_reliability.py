"""Bad data cannot hang, exhaust or silently degrade a run: each guard checked through `openslip train`.

Runs that a regression could hang (a FIFO, a stream of shards with no usable sample) run in a subprocess with a
generous timeout, so that a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from train_utils import overrides, read_metrics

import openslip.data.formats.records as records_module
from openslip.cli import main
from openslip.data.formats.decode import DEFAULT_MAX_BYTES, DecodeOptions, decode_image, read_bytes
from openslip.data.formats.manifest import ManifestSource
from openslip.data.skips import BadSample

pytestmark = pytest.mark.usefixtures("one_thread")

HANG_TIMEOUT_S = 300  # only catches a hang: these runs take a few seconds


def _jpeg(size: tuple[int, int] = (48, 40), seed: int = 0, **save: object) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", **save)
    return out.getvalue()


def _manifest(folder: Path, bad_rows: list[str], good: int = 14, caption: str = "a photo number {i}") -> Path:
    """A CSV of `good` small JPEGs plus `bad_rows` (image paths); 14 + 2 rows fill one batch of 16 exactly, so every
    row is read in the first epoch."""
    rows = [["image", "caption"]]
    for i in range(good):
        (folder / f"{i}.jpg").write_bytes(_jpeg(seed=i))
        rows.append([f"{i}.jpg", caption.format(i=i)])
    rows += [[path, "a bad row"] for path in bad_rows]
    path = folder / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _write_tar(path: Path, members: list[tuple[str, bytes | int]]) -> None:
    """A tar of (name, data) members; an int instead of data is a member of that many zero bytes left as a hole
    in the file (sparse: it takes no disk space)."""
    with open(path, "wb") as f:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            f.write(info.tobuf())
            pad = -info.size % 512
            if isinstance(data, int):
                f.seek(info.size + pad, os.SEEK_CUR)
            else:
                f.write(data + b"\0" * pad)
        f.write(b"\0" * 1024)  # end of archive


def _train_subprocess(out: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys; from openslip.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "train", *overrides(out, *args)],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("openslip train: error:")]


# ---------------------------------------------------------------------------------------------------------------
# 1. No hang on shards without a usable sample
# ---------------------------------------------------------------------------------------------------------------


def _shard(path: Path, n: int, *, captions: bool) -> None:
    members: list[tuple[str, bytes | int]] = []
    for i in range(n):
        members.append((f"{i:06d}.jpg", _jpeg(seed=i)))
        if captions:
            members.append((f"{i:06d}.txt", f"a photo number {i}".encode()))
    _write_tar(path, members)


def test_shards_without_captions_stop_with_one_line_instead_of_hanging(tmp_path: Path):
    _shard(tmp_path / "a.tar", 20, captions=False)
    _shard(tmp_path / "b.tar", 20, captions=False)
    proc = _train_subprocess(tmp_path / "run", f"data.train={tmp_path}/{{a,b}}.tar", "train.steps=2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = _error_lines(proc.stderr)
    assert "101 samples in a row failed" in line and "missing_caption: 101" in line and ".tar" in line


def test_one_bad_shard_of_two_with_two_workers_stops_with_one_line(tmp_path: Path):
    _shard(tmp_path / "good.tar", 20, captions=True)
    _shard(tmp_path / "bad.tar", 20, captions=False)
    proc = _train_subprocess(
        tmp_path / "run", f"data.train={tmp_path}/{{good,bad}}.tar", "train.steps=4", "data.num_workers=2"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = _error_lines(proc.stderr)
    assert "in a row failed" in line and "bad.tar" in line and "good.tar" not in line
    assert "missing_caption" in line


# ---------------------------------------------------------------------------------------------------------------
# 2. FIFOs and devices are refused without being opened; 4. bounded reads
# ---------------------------------------------------------------------------------------------------------------


def test_fifo_and_device_in_a_manifest_are_counted_skips(tmp_path: Path):
    os.mkfifo(tmp_path / "x.jpg")  # opening it for reading would block until a writer comes: never
    manifest = _manifest(tmp_path, ["x.jpg", "/dev/zero"])  # /dev/zero: an endless read
    proc = _train_subprocess(tmp_path / "run", f"data.train={manifest}", "train.steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = read_metrics(tmp_path / "run")[-1]
    assert last["data/skip/not_a_file"] >= 2


def test_oversized_file_and_tar_member_are_skipped_unread(tmp_path: Path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: no disk space, but stat says 64 MiB + 1
    manifest = _manifest(tmp_path, ["big.jpg"], good=15)
    assert main(["train", *overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=2")]) == 0
    assert read_metrics(tmp_path / "run")[-1]["data/skip/too_large_file"] >= 1

    members: list[tuple[str, bytes | int]] = [("000000.jpg", DEFAULT_MAX_BYTES + 1), ("000000.txt", b"huge")]
    for i in range(1, 17):
        members += [(f"{i:06d}.jpg", _jpeg(seed=i)), (f"{i:06d}.txt", f"a photo number {i}".encode())]
    _write_tar(tmp_path / "s.tar", members)
    assert (tmp_path / "s.tar").stat().st_blocks * 512 < DEFAULT_MAX_BYTES // 4  # the test file stays small
    assert main(["train", *overrides(tmp_path / "shards", f"data.train={tmp_path}/s.tar", "train.steps=2")]) == 0
    assert read_metrics(tmp_path / "shards")[-1]["data/skip/too_large_file"] >= 1


def test_a_small_byte_limit_from_the_config(tmp_path: Path):
    manifest = _manifest(tmp_path, [], good=16)
    run = overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=2", "data.max_file_bytes=100")
    assert main(["train", *run, "data.max_skip_rate=1.0"]) == 2  # every file is over 100 bytes: nothing to train on
    with pytest.raises(BadSample) as err:
        read_bytes(tmp_path / "0.jpg", max_bytes=100)
    assert err.value.reason == "too_large_file"


def test_pixel_bomb_is_skipped_before_decoding(tmp_path: Path):
    Image.new("1", (13000, 13000)).save(tmp_path / "bomb.png")  # 169 MP; a few KB on disk, 500 MB as RGB
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    manifest = _manifest(tmp_path, ["bomb.png"], good=15)
    assert main(["train", *overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=2")]) == 0
    assert read_metrics(tmp_path / "run")[-1]["data/skip/too_large"] >= 1


def test_memory_error_while_decoding_is_a_counted_skip(tmp_path: Path, monkeypatch):
    (tmp_path / "oom.jpg").write_bytes(_jpeg((41, 41)))
    real_load = ImageFile.ImageFile.load

    def load(self):
        if self.size == (41, 41):
            raise MemoryError
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    manifest = _manifest(tmp_path, ["oom.jpg"], good=15)
    assert main(["train", *overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=2")]) == 0
    assert read_metrics(tmp_path / "run")[-1]["data/skip/out_of_memory"] >= 1


def test_decode_options_reach_the_decoder(tmp_path: Path, monkeypatch):
    """data.jpeg_draft (draft at 2x the image size), data.exif_transpose, data.max_file_bytes and data.max_pixels
    reach the decoder as one DecodeOptions, unchanged."""
    seen: list[DecodeOptions] = []
    real = records_module.decode_image

    def spy(src, options, **kwargs):
        seen.append(options)
        return real(src, options, **kwargs)

    monkeypatch.setattr(records_module, "decode_image", spy)
    manifest = _manifest(tmp_path, [], good=16)
    assert main(["train", *overrides(tmp_path / "a", f"data.train={manifest}", "train.steps=1")]) == 0
    # the micro model's 32 px x 2
    assert seen[-1] == DecodeOptions(max_pixels=100_000_000, max_bytes=DEFAULT_MAX_BYTES, draft_size=64)
    seen.clear()
    off = ["data.jpeg_draft=false", "data.exif_transpose=false", "data.max_file_bytes=1000000", "data.max_pixels=9000"]
    assert main(["train", *overrides(tmp_path / "b", f"data.train={manifest}", "train.steps=1", *off)]) == 0
    assert seen[-1] == DecodeOptions(max_pixels=9000, max_bytes=1_000_000, draft_size=None, exif_transpose=False)


def test_draft_decodes_large_jpegs_at_reduced_size():
    data = _jpeg((800, 600))
    assert decode_image(data).size == (800, 600)
    assert decode_image(data, DecodeOptions(draft_size=64)).size == (100, 75)  # 1/8 scale keeps both sides >= 64
    assert decode_image(data, DecodeOptions(draft_size=200)).size == (400, 300)


# ---------------------------------------------------------------------------------------------------------------
# 3. The skip-rate threshold works for short runs
# ---------------------------------------------------------------------------------------------------------------


def test_short_run_with_a_quarter_bad_files_stops(tmp_path: Path, capsys):
    manifest = _manifest(tmp_path, [f"gone{i}.jpg" for i in range(10)], good=30)  # 25% missing
    run = overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=20", "data.max_skip_rate=0.1")
    assert main(["train", *run]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "missing_file" in line and "above data.max_skip_rate=0.1" in line


def test_skip_check_minimum_is_a_config_key(tmp_path: Path):
    manifest = _manifest(tmp_path, [f"gone{i}.jpg" for i in range(10)], good=30)
    run = overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=3", "data.max_skip_rate=0.1")
    assert main(["train", *run, "data.min_samples_for_skip_check=100000"]) == 0  # never reached: not checked


# ---------------------------------------------------------------------------------------------------------------
# 5. EXIF orientation; 6. long CSV fields
# ---------------------------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied_unless_turned_off():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    data = _jpeg((48, 24), exif=exif.tobytes())
    assert decode_image(data).size == (24, 48)
    assert decode_image(data, DecodeOptions(exif_transpose=False)).size == (48, 24)
    assert decode_image(_jpeg((48, 24))).size == (48, 24)  # no tag: unchanged


def test_a_caption_over_the_csv_field_limit_does_not_break_the_manifest(tmp_path: Path):
    limit = csv.field_size_limit()
    manifest = _manifest(tmp_path, [], good=16, caption="caption {i} " + "word " * 40_000)  # 200,000 characters
    assert len(ManifestSource(manifest).record(0).captions[0]) > 131_072
    assert csv.field_size_limit() == limit  # the process-wide limit is restored
    assert main(["train", *overrides(tmp_path / "run", f"data.train={manifest}", "train.steps=1")]) == 0


def test_skip_check_uses_a_lower_confidence_bound():
    from openslip.data.skips import SkipCounter
    from openslip.errors import DataError

    def counter(seen: int, skipped: int) -> SkipCounter:
        c = SkipCounter()
        c.add_seen(seen)
        c.skip("missing_file", skipped)
        return c

    assert round(counter(100, 25).rate_lower_bound(), 3) == 0.145  # the documented example
    with pytest.raises(DataError, match=r"^skipped 25% of 100 samples \(missing_file: 25\)"):
        counter(100, 25).check(0.1)
    counter(100, 15).check(0.1)  # 15% of 100 is not significantly above 10%
    counter(99, 99).check(0.1, min_samples=100)  # below the minimum: not checked
    with pytest.raises(DataError):
        counter(100_000, 10_500).check(0.1)  # a long run: the bound nears the observed rate
