"""Bad input never kills a run and never passes silently: skip, count by reason, stop past a threshold.

The policy: docs/DESIGN.md, 'Bad input'.
"""

from __future__ import annotations

import collections
import io
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openslip.data.formats.decode import DecodeOptions, clean_captions, decode_image, to_rgb
from openslip.data.formats.shards import ShardSource
from openslip.data.loader import build_train_loader
from openslip.data.skips import BadSample, SkipCounter
from openslip.data.sources import open_source
from openslip.errors import DataError

N_GOOD = 40


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def _noise_jpeg(size: int = 32) -> bytes:
    rng = np.random.default_rng(0)
    return _encoded(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), "JPEG")


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    img.paste(1, (4, 0, 8, 8))
    img.info["transparency"] = 0  # the red half is transparent
    return img


# (file name, bytes or None for a missing file, expected outcome); outcomes: "ok", "converted/<kind>", or a reason
BAD_IMAGES: list[tuple[str, bytes | None, str]] = [
    ("zero.jpg", b"", "empty_file"),
    ("truncated.jpg", _noise_jpeg()[:400], "truncated"),
    ("text.jpg", b"this is a text file, not a JPEG\n", "not_an_image"),
    ("huge.png", _png_header_only(30000, 30000), "too_large"),
    ("missing.jpg", None, "missing_file"),
    ("cmyk.jpg", _encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), "converted/cmyk"),
    ("gray16.png", _encoded(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"), "converted/i;16"),
    ("palette.png", _encoded(_palette_with_transparency(), "PNG", transparency=0), "converted/p+transparency"),
    ("la.png", _encoded(Image.new("LA", (8, 8), (100, 128)), "PNG"), "converted/la"),
    ("rgba.png", _encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), "converted/rgba"),
]
BAD_CAPTIONS: list[tuple[bytes, str]] = [
    (b"", "empty_caption"),
    (b"   ", "empty_caption"),
    (b"caf\xe9 au lait \xff", "bad_caption"),  # Latin-1 bytes in a UTF-8 manifest
    (b"word " * 3000, "ok"),  # over-long: kept, the tokenizer truncates
]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    """A CSV manifest of N_GOOD good samples plus every kind of bad input; returns (path, outcome per row)."""
    (tmp_path / "img").mkdir()
    rows: list[bytes] = [b"image,caption"]
    outcomes: list[str] = []
    for i in range(N_GOOD):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "img" / f"good{i}.png")
        rows.append(f"img/good{i}.png,good sample {i}".encode())
        outcomes.append("ok")
    for name, data, outcome in BAD_IMAGES:
        if data is not None:
            (tmp_path / "img" / name).write_bytes(data)
        rows.append(f"img/{name},a caption for {name}".encode())
        outcomes.append(outcome)
    (tmp_path / "img" / "dir.jpg").mkdir()
    rows.append(b"img/dir.jpg,a folder named like an image")
    outcomes.append("unreadable_file")
    for j, (caption, outcome) in enumerate(BAD_CAPTIONS):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"cap{j}.png")
        rows.append(b"img/cap%d.png,%s" % (j, caption))
        outcomes.append(outcome)
    (tmp_path / "bad.csv").write_bytes(b"\n".join(rows) + b"\n")
    return tmp_path / "bad.csv", outcomes


class _Logged:
    """Wraps a source and records every index the loader tries (num_workers=0: same process)."""

    def __init__(self, source):
        self.source, self.tried = source, []

    def __len__(self):
        return len(self.source)

    def record(self, i):
        self.tried.append(i)
        return self.source.record(i)


def _transform(img: Image.Image) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return {"image": x, "view1": x, "view2": x}


def _tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[min(len(t), 10**6)] + [0] * 76 for t in texts])


def test_loader_skips_and_counts_every_bad_input_exactly(corpus):
    path, outcomes = corpus
    source = _Logged(open_source(str(path)))
    assert len(source) == len(outcomes) == 55
    loader = build_train_loader(source, _transform, _tokenize, 5, 0, 0, 0, 1, max_skip_rate=None)
    batches = list(loader)
    assert len(batches) == 11 and all(b["image"].shape == (5, 3, 8, 8) for b in batches)
    used = [i for b in batches for i in b["id"].tolist()]
    assert all(outcomes[i] == "ok" or outcomes[i].startswith("converted/") for i in used)

    # the primary visit of every row happened, plus the replacement draws; count what each attempt must give
    assert set(source.tried) == set(range(len(outcomes)))
    expected_skips = collections.Counter(outcomes[i] for i in source.tried if outcomes[i] not in ("ok",))
    expected_converted = {k[len("converted/") :]: v for k, v in expected_skips.items() if k.startswith("converted/")}
    expected_skipped = {k: v for k, v in expected_skips.items() if not k.startswith("converted/")}
    assert loader.skips.skipped == expected_skipped
    assert loader.skips.converted == expected_converted
    assert loader.skips.seen == len(source.tried) == len(used) + loader.skips.total_skipped
    assert set(expected_skipped) == {
        "empty_file",
        "truncated",
        "not_an_image",
        "too_large",
        "missing_file",
        "unreadable_file",
        "empty_caption",
        "bad_caption",
    }
    longest = max(int(b["text"][:, 0].max()) for b in batches)
    assert longest == len("word " * 3000)  # the over-long caption reached the tokenizer whole


def test_loader_with_workers_finishes_and_reports_counts(corpus):
    path, outcomes = corpus
    loader = build_train_loader(open_source(str(path)), _transform, _tokenize, 5, 2, 0, 0, 1, max_skip_rate=None)
    batches = list(loader)
    assert len(batches) == 11
    assert loader.skips.seen - loader.skips.total_skipped == 55
    bad_kinds = {o for o in outcomes if o != "ok" and not o.startswith("converted/")}
    assert set(loader.skips.skipped) == bad_kinds
    state = loader.state_dict()["skips"]
    assert state["seen"] == loader.skips.seen and state["skip/missing_file"] >= 1


def test_skip_rate_threshold_stops_with_a_clear_message(corpus):
    path, _ = corpus
    loader = build_train_loader(
        open_source(str(path)), _transform, _tokenize, 5, 0, 0, 0, 1, max_skip_rate=0.05, min_samples_for_check=20
    )
    with pytest.raises(
        DataError, match=r"^skipped \d+% of \d+ samples \(.*missing_file: \d.*\) — above data\.max_skip"
    ):
        list(loader)


def test_a_source_with_nothing_readable_stops_with_one_line(tmp_path: Path):
    (tmp_path / "m.csv").write_text("image,caption\n" + "".join(f"gone{i}.jpg,c\n" for i in range(20)))
    loader = build_train_loader(
        open_source(str(tmp_path / "m.csv")), _transform, _tokenize, 4, 2, 0, 0, 1, max_skip_rate=None, max_attempts=3
    )
    with pytest.raises(DataError) as err:
        list(loader)
    assert "4 samples in a row failed" in str(err.value) and "missing_file: 4" in str(err.value)
    assert "\n" not in str(err.value)  # not wrapped in the worker's traceback


def test_skip_counter_report_merge_and_threshold():
    counter = SkipCounter()
    counter.add_seen(1000)
    counter.skip("missing_file", 300)
    counter.skip("truncated", 70)
    with pytest.raises(DataError) as err:
        counter.check(0.1)
    assert str(err.value) == (
        "skipped 37% of 1,000 samples (missing_file: 300, truncated: 70) — above data.max_skip_rate=0.1"
    )
    counter.check(0.5)  # below the threshold
    few = SkipCounter()
    few.add_seen(10)
    few.skip("truncated", 9)
    few.check(0.1)  # too few samples to judge
    merged = SkipCounter.merged([counter.state_dict(), few])
    assert merged.seen == 1010 and merged.skipped == {"missing_file": 300, "truncated": 79}
    assert SkipCounter().update(merged.state_dict()) == merged
    assert merged.all_reduce() == merged  # one process: a copy


# ---------------------------------------------------------------------------------------------------------------
# Decoding and conversion rules
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,data,outcome", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_decode_outcomes(tmp_path: Path, name: str, data: bytes | None, outcome: str):
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    counter = SkipCounter()
    if outcome.startswith("converted/"):
        img = decode_image(path, counter=counter)
        assert img.mode == "RGB" and img.size == (8, 8)
        assert counter.converted == {outcome[len("converted/") :]: 1}
    else:
        with pytest.raises(BadSample) as err:
            decode_image(path, counter=counter)
        assert err.value.reason == outcome


def test_conversions_are_correct():
    sixteen = Image.fromarray(np.array([[0, 255, 256, 40000, 65535]], np.uint16))
    assert np.asarray(decode_image(_encoded(sixteen, "PNG")))[0, :, 0].tolist() == [0, 0, 1, 156, 255]
    palette = decode_image(_encoded(_palette_with_transparency(), "PNG", transparency=0))
    assert palette.getpixel((0, 0)) == (255, 255, 255) and palette.getpixel((7, 0)) == (0, 0, 255)
    black = decode_image(_encoded(_palette_with_transparency(), "PNG", transparency=0), background=(0, 0, 0))
    assert black.getpixel((0, 0)) == (0, 0, 0)
    half = decode_image(_encoded(Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "PNG"))
    assert abs(half.getpixel((0, 0))[0] - 127) <= 1  # black at 50% over white
    la = decode_image(_encoded(Image.new("LA", (2, 2), (0, 0)), "PNG"))
    assert la.getpixel((0, 0)) == (255, 255, 255)
    cmyk = np.asarray(decode_image(_encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")))
    assert cmyk[4, 4, 0] > 200 and cmyk[4, 4, 1] < 60 and cmyk[4, 4, 2] < 60  # red
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    floats = Image.fromarray(np.full((2, 2), 0.5, np.float32))
    assert to_rgb(floats).getpixel((0, 0)) == (128, 128, 128)


def test_bomb_headers_are_refused_before_decoding():
    start = time.perf_counter()
    with pytest.raises(BadSample) as err:
        decode_image(_png_header_only(30000, 30000))  # Pillow's own DecompressionBombError
    assert err.value.reason == "too_large"
    with pytest.raises(BadSample) as err:
        decode_image(_png_header_only(5000, 5000), DecodeOptions(max_pixels=1_000_000))  # our limit, from the header
    assert err.value.reason == "too_large" and "5000x5000" in str(err.value)
    assert time.perf_counter() - start < 1.0


def test_caption_rules():
    assert clean_captions("a dog") == ["a dog"]
    assert clean_captions(["", "  ", "a cat", b"a \xc3\xa9t\xc3\xa9"]) == ["a cat", "a été"]
    for raw, reason in [("", "empty_caption"), ([" ", "\n"], "empty_caption"), (b"\xff\xfe", "bad_caption")]:
        with pytest.raises(BadSample) as err:
            clean_captions(raw)
        assert err.value.reason == reason
    for raw in (None, []):
        with pytest.raises(BadSample) as err:
            clean_captions(raw)
        assert err.value.reason == "missing_caption"
    assert clean_captions("x" * 100_000) == ["x" * 100_000]


# ---------------------------------------------------------------------------------------------------------------
# Bad shards
# ---------------------------------------------------------------------------------------------------------------


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for suffix, data in files.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_bad_shard_members_and_a_truncated_shard_are_counted(tmp_path: Path):
    png = _encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG")
    good = [(f"g{i:03d}", {"png": png, "txt": f"good {i}".encode()}) for i in range(16)]
    bad = [
        ("b000", {"txt": b"no image"}),
        ("b001", {"png": png, "txt": b"\xff\xfe"}),
        ("b002", {"png": png, "txt": b"  "}),
        ("b003", {"jpg": _noise_jpeg()[:300], "txt": b"cut"}),
        ("b004", {"png": png}),
    ]
    _write_tar(tmp_path / "a.tar", good[:8] + bad)
    _write_tar(tmp_path / "b.tar", good[8:])
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2 + 700])  # a partial copy, cut inside a member
    source = ShardSource(str(tmp_path / "{a,b}.tar"))
    with pytest.warns(UserWarning, match="cannot count the samples of .*b.tar"):
        sizes = source.ensure_sizes()
    assert sizes[0] == 13 and 0 < sizes[1] < 8
    loader = build_train_loader(source, _transform, _tokenize, 4, 0, 0, 0, 1, max_skip_rate=None)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    counts = loader.skips.skipped
    assert {"missing_image", "bad_caption", "empty_caption", "truncated", "missing_caption", "bad_shard"} <= set(counts)
    assert loader.skips.seen - loader.skips.total_skipped == 4 * len(batches)


def test_a_shard_shorter_than_its_index_is_reported(tmp_path: Path):
    from openslip.data.formats.shards import make_shards

    for i in range(12):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"sample {i}")
    make_shards(open_source(str(tmp_path)), tmp_path / "s", shard_size=6)
    shard = tmp_path / "s" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: 10 * 512])  # cut at a member boundary: a clean but shorter tar
    errors = []
    samples = list(
        ShardSource(str(tmp_path / "s")).iter_shard(1, on_error=lambda reason, detail: errors.append(detail))
    )
    assert 0 < len(samples) < 6 and len(errors) == 1 and "of the 6 samples its index lists" in errors[0]
