"""data.decode=device: workers hand over JPEG bytes, the batch is decoded where it trains (here: the CPU, with PIL).

The views must be those of data.augment=device with the workers' CPU decode (same seed, same step), the files the
batch decoder does not take (a PNG, a CMYK JPEG, a cut-off JPEG) are decoded in the workers and counted, and a
run goes through `openslip train` like any other."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openslip.cli import main
from openslip.data.augment.params import IMAGENET_STD
from openslip.data.batch_decode import UNDECODABLE, BatchDecoder, pack
from openslip.data.formats.decode import DecodeOptions, EncodedJpeg, decode_image
from openslip.data.skips import BadSample, SkipCounter
from openslip.errors import ConfigError
from openslip.train.data import build_train_data
from openslip.train.recipes import make_config
from tests.train_utils import overrides, read_metrics

N_IMAGES, SHARD_SIZE, BATCH = 12, 4, 4
GREY_LEVEL = 1.0 / (255.0 * min(IMAGENET_STD))  # one uint8 step after normalisation, the largest over the channels


def _photo(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Smooth colour fields plus noise (flat colours would test little of the decoder). [h, w, 3] uint8."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3) + 50 * np.sin(x[..., None] / rng.uniform(5, 15) + rng.uniform(0, 6, 3))
    return np.clip(base + rng.normal(0, 12, (h, w, 3)) + 0 * y[..., None], 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 captioned images, one of them a PNG, written as 3 shards by `openslip data make-shards` (clean JPEG / PNG
    files are stored byte for byte). Half are 100 x 75, so the shrink to the micro model's 2 x 32 px runs, half
    72 x 54, within SHRINK_SLACK of it, so they travel whole (in the decoder's [h, w, 3] memory)."""
    root = tmp_path_factory.mktemp("decode")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        pixels = Image.fromarray(_photo(rng, (100, 75) if i % 2 else (72, 54)))
        if i == 5:
            pixels.save(folder / f"{i:02d}.png")
        else:
            pixels.save(folder / f"{i:02d}.jpg", quality=90)
        (folder / f"{i:02d}.txt").write_text(f"a photo number {i}")
    out = root / "shards"
    assert main(["data", "make-shards", str(folder), str(out), "--shard-size", str(SHARD_SIZE)]) == 0
    return out


def _data(shards: Path, decode: str):
    cfg = make_config(
        {
            "model": "slip_vit_micro",
            "data": {"train": str(shards), "augment": "device", "decode": decode, "num_workers": 0},
            "train": {"batch_size": BATCH},
        }
    )
    return build_train_data(cfg, 32, ("image", "view1", "view2"), True, 0, 1, torch.device("cpu"))


def test_device_decode_views_equal_the_cpu_decode_views(shards: Path) -> None:
    """One epoch (every sample, the PNG too) through both paths: the same batches, views within one grey level (the
    same PIL decode, draft scaling and shrink on both sides: in fact equal), and the PNG counted as a fall-back."""
    cpu, device = _data(shards, "cpu"), _data(shards, "device")
    batches = N_IMAGES // BATCH
    for step, (a, b) in enumerate(zip(cpu.loader, device.loader, strict=True)):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["text"], b["text"])
        assert b["image_data"].dtype == torch.uint8 and b["image_index"].shape == (BATCH, 5)
        va, vb = cpu.views(a, step, torch.device("cpu")), device.views(b, step, torch.device("cpu"))
        assert va.keys() == vb.keys() == {"image", "view1", "view2", "text"}
        for key in ("image", "view1", "view2"):
            assert va[key].shape == vb[key].shape
            assert (va[key] - vb[key]).abs().max().item() <= GREY_LEVEL + 1e-6, key
    assert step == batches - 1
    assert device.loader.skips.fallback == {"png": 1} and cpu.loader.skips.fallback == {}
    assert device.loader.skips.total_skipped == 0
    # the JPEGs travelled as their file bytes: the packed buffer of a batch is its files, not its pixels
    assert "1 images decoded on the CPU, not by the batch decoder (png: 1)" in device.loader.skips.summary()


def test_train_with_device_decode_through_the_cli(shards: Path, tmp_path: Path, capsys) -> None:
    """Two steps of `openslip train` with data.decode=device and loader workers (the packed bytes cross processes);
    the fall-back count is in metrics.jsonl and the run log says it once."""
    run = tmp_path / "run"
    extra = ("data.augment=device", "data.decode=device", "data.num_workers=2", f"train.batch_size={BATCH}")
    assert main(["train", *overrides(run, f"data.train={shards}", *extra), "train.steps=2"]) == 0
    records = [r for r in read_metrics(run) if "loss" in r]
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)
    if records[-1].get("data/fallback/png"):  # the PNG's shard may not be among the two steps' batches
        captured = capsys.readouterr()
        assert "decoded on the CPU, not by the batch decoder (png: 1)" in captured.out + captured.err


def test_device_decode_needs_device_augment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = overrides(tmp_path / "run", "data.decode=device")
    assert main(["train", *argv, "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.decode=device needs data.augment=device" in err
    assert main(["train", *overrides(tmp_path / "run2", "data.decode=gpu"), "train.steps=1"]) == 2
    assert "data.decode" in capsys.readouterr().err


def test_cuda_decode_without_torchvision_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nvJPEG path imports torchvision when the decoder is built (the run's start), before touching CUDA: a
    CUDA request on a machine without torchvision (faked here by hiding the module) fails in one line."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(ConfigError) as err:
        BatchDecoder(torch.device("cuda"), 64, 64, SkipCounter())
    assert "pip install torchvision" in str(err.value) and "data.decode=cpu" in str(err.value)
    assert "\n" not in str(err.value)


def _encoded(image: Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, **save)
    return out.getvalue()


def test_workers_keep_only_the_jpegs_the_batch_decoder_reads() -> None:
    keep = DecodeOptions(keep_jpeg=True)
    rgb = Image.fromarray(_photo(np.random.default_rng(1), (40, 30)))
    counter = SkipCounter()
    jpeg = _encoded(rgb, format="JPEG", quality=90)
    kept = decode_image(jpeg, keep, counter=counter)
    assert isinstance(kept, EncodedJpeg) and kept.data == jpeg and kept.size == (40, 30)
    grey = decode_image(_encoded(rgb.convert("L"), format="JPEG"), keep, counter=counter)
    assert isinstance(grey, EncodedJpeg) and counter.converted == {"l": 1}
    cmyk = decode_image(_encoded(rgb.convert("CMYK"), format="JPEG"), keep, counter=counter)
    assert isinstance(cmyk, Image.Image) and cmyk.mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the CPU path turns it upright
    turned = decode_image(_encoded(rgb, format="JPEG", exif=exif), keep, counter=counter)
    assert isinstance(turned, Image.Image) and turned.size == (30, 40)
    assert counter.fallback == {"jpeg_cmyk": 1, "jpeg_exif_orientation": 1}
    with pytest.raises(BadSample) as bad:  # cut short: no end marker, decoded in the worker, skipped as usual
        decode_image(jpeg[:-40], keep, counter=counter)
    assert bad.value.reason == "truncated" and counter.fallback["jpeg_no_end_marker"] == 1


def test_batch_decoder_shrinks_and_stands_in_for_an_unreadable_jpeg() -> None:
    """The list hand-off: pixels and bytes in one buffer; a JPEG no decoder reads (its scan broken after header
    checks) becomes a grey image, counted, so the batch keeps its size; the shrink keeps the aspect ratio."""
    rng = np.random.default_rng(2)
    good = _encoded(Image.fromarray(_photo(rng, (100, 50))), format="JPEG", quality=90)
    broken = good[:200] + bytes(len(good) - 202) + b"\xff\xd9"
    pixels = _photo(rng, (20, 10))
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # a shrink's result: [3, h, w] in memory
    hwc = pixels.transpose(2, 0, 1)  # an unshrunk decode: [3, h, w] with the decoder's [h, w, 3] memory
    items = [np.frombuffer(good, np.uint8), chw, hwc, np.frombuffer(broken, np.uint8)]
    buffer, index = pack(items)
    end = len(good) + pixels.size
    assert index.tolist()[1:3] == [[len(good), end, 10, 20, 0], [end, end + pixels.size, 10, 20, 1]]
    assert bytes(buffer[end:].numpy()[: pixels.size]) == pixels.tobytes()  # stored as they were: no transpose
    counter = SkipCounter()
    images = BatchDecoder(torch.device("cpu"), 64, None, counter)(buffer, index)
    assert [tuple(im.shape) for im in images[:3]] == [(3, 32, 64), (3, 10, 20), (3, 10, 20)]
    assert torch.equal(images[1], torch.from_numpy(pixels).permute(2, 0, 1)) and torch.equal(images[2], images[1])
    assert all(im.dtype == torch.uint8 for im in images)
    assert counter.fallback == {UNDECODABLE: 1} and torch.equal(
        images[3], torch.full((3, 8, 8), 128, dtype=torch.uint8)
    )


@pytest.mark.parametrize("size", [(100, 50), (500, 375), (375, 500), (333, 77), (641, 480)])
def test_every_shrink_is_pils_bilinear_filter(size: tuple[int, int]) -> None:
    """The workers, the PIL batch decoder and nvJPEG's full-size decodes shrink with one function: on the CPU torch's
    uint8 antialiased kernel, off it (CUDA) the same filter in float. Both are PIL's bilinear resize to within one
    grey level (the uint8 kernel's fixed point and float rounding: max difference 1 on these and 1000 x 999 images,
    on AVX2 and AVX-512 alike, as the kernel is integer arithmetic)."""
    from openslip.data.batch_decode import SHRINK_SLACK, shrink, shrink_float, shrunk_size

    pixels = _photo(np.random.default_rng(3), size)
    ours = shrink(Image.fromarray(pixels), 64)
    h, w = shrunk_size(size[1], size[0], 64)
    assert ours.shape == (3, h, w) and ours.dtype == torch.uint8 and max(h, w) == 64
    pil = torch.from_numpy(np.array(Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR)))
    assert (ours.float() - pil.permute(2, 0, 1).float()).abs().max().item() <= 1
    on_gpu = shrink_float(torch.from_numpy(pixels).permute(2, 0, 1), (h, w))
    assert (ours.float() - on_gpu.float()).abs().max().item() <= 1
    assert torch.equal(shrink(pixels, 64), ours) and torch.equal(
        shrink(torch.from_numpy(pixels).permute(2, 0, 1), 64), ours
    )
    # within SHRINK_SLACK of the bound: the pixels as they are, in their own memory (no copy)
    whole = torch.from_numpy(pixels).permute(2, 0, 1)
    bound = math.ceil(max(size) / SHRINK_SLACK)
    assert shrunk_size(size[1], size[0], bound) == size[::-1] and torch.equal(shrink(whole, bound), whole)
    assert shrunk_size(size[1], size[0], bound - 1) != size[::-1]
    assert shrink(pixels, bound).data_ptr() == pixels.ctypes.data


def test_device_decode_is_recorded_and_may_change_on_resume(shards: Path, tmp_path: Path) -> None:
    """The run's config.yaml records data.decode; a resumed run may decode elsewhere (the images are the same), as
    it may change its worker count, without resume_force."""
    run = tmp_path / "run"
    base = (f"data.train={shards}", "data.augment=device", f"train.batch_size={BATCH}")
    assert main(["train", *overrides(run, *base, "data.decode=device", "train.steps=1")]) == 0
    assert "  decode: device\n" in (run / "config.yaml").read_text()
    assert main(["train", *overrides(run, *base, "data.decode=cpu", "train.steps=2", "resume=auto")]) == 0
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_bench_splits_the_data_wait(shards: Path, tmp_path: Path, decode: str, capsys) -> None:
    """`bench train --with-data` gives the data phase in parts (ms per step), each present and >= 0, and with
    data.decode=device the batch decoder's CPU time and the fall-back count (no speed asserted)."""
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "model=slip_vit_micro", f"train.batch_size={BATCH}", "--steps", "2", "--warmup", "0"]
    argv += ["--with-data", f"data.train={shards}", "data.augment=device", f"data.decode={decode}"]
    argv += ["data.num_workers=1", "--peak-budget", "0.1", "--output", str(out)]
    assert main(argv) == 0
    e2e = json.loads(out.read_text())["end_to_end"]
    parts = e2e["data_parts_ms_per_step"]
    assert list(parts) == ["workers", "handoff", "copy", "decode_augment"]
    assert all(v >= 0 for v in parts.values()) and e2e["collate_cpu_s_per_batch"] >= 0
    text = capsys.readouterr().out
    assert "data phase, ms per step: waiting for workers" in text and "host-to-device copy" in text
    if decode == "device":
        assert e2e["batch_decode_cpu_s_per_batch"] > 0 and "batch decode (data.decode=device)" in text
        assert set(e2e["fallback"]) <= {"png"}
    else:
        assert "batch_decode_cpu_s_per_batch" not in e2e


def test_a_jpeg_the_batch_decoder_refuses_is_decoded_by_pil_and_counted() -> None:
    """The nvJPEG branch's bookkeeping, with a stand-in for nvJPEG (no GPU here): one file it refuses fails the whole
    batch call; the batch is retried one by one, the refused file goes to PIL and is counted, and the images it
    decoded at full size are shrunk on the device."""
    from openslip.data.batch_decode import REFUSED

    rng = np.random.default_rng(4)
    files = [_encoded(Image.fromarray(_photo(rng, (120, 90))), format="JPEG", quality=90) for _ in range(3)]
    refused = files[1]

    def fake_nvjpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        if any(d.numpy().tobytes() == refused for d in data):
            raise RuntimeError("nvjpeg: unsupported")
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d.numpy().tobytes())))).permute(2, 0, 1) for d in data]

    counter = SkipCounter()
    decoder = BatchDecoder(torch.device("cpu"), 64, None, counter)
    decoder._nvjpeg = fake_nvjpeg
    images = decoder(*pack([np.frombuffer(f, np.uint8) for f in files]))
    assert [tuple(im.shape) for im in images] == [(3, 48, 64)] * 3
    assert counter.fallback == {REFUSED: 1}


def test_workers_reuse_their_batch_memory_and_no_batch_is_overwritten(shards: Path, monkeypatch) -> None:
    """Loader workers build the packed images in a ring of shared-memory segments (openslip.data.buffer_ring) that
    `TrainData.views` hands back once read: over 4 epochs with 2 workers of 4 segments each, segments come back to
    the same worker slot, still mapped at the same address in this process, and every view equals that of a
    consumer that never hands anything back (so every batch has memory of its own)."""
    steps = 4 * N_IMAGES // BATCH

    def run(give_back: bool) -> tuple[list[dict[str, torch.Tensor]], int]:
        cfg = make_config(
            {
                "model": "slip_vit_micro",
                "data": {"train": str(shards), "augment": "device", "num_workers": 2},
                "train": {"batch_size": BATCH},
            }
        )
        data = build_train_data(cfg, 32, ("image", "view1", "view2"), True, 0, 1, torch.device("cpu"))
        if not give_back:
            monkeypatch.setattr(data.loader, "release", lambda batch: None)
        mapped: dict[tuple, int] = {}
        reused = 0
        out = []
        batches = data.loader.forever()
        try:
            for step in range(steps):
                batch = next(batches)
                lease = batch.get("_lease")  # none once every segment of the worker is lent (never given back)
                assert lease is not None or not give_back
                if lease is not None:
                    key, address = (lease.ring, lease.slot), lease.segment.data_ptr()
                    if key in mapped and give_back:  # the segment the loader kept mapped: not mapped anew
                        assert address == mapped[key]
                        reused += 1
                    mapped[key] = address
                out.append(data.views(batch, step, torch.device("cpu")))
                assert "_lease" not in batch or not give_back
        finally:
            batches.close()
        return out, reused

    reusing, reused = run(give_back=True)
    fresh, _ = run(give_back=False)
    assert reused >= steps - 2 * 4  # all but each slot's first batch
    for a, b in zip(reusing, fresh, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_ring_lends_each_segment_to_one_batch_at_a_time() -> None:
    from openslip.data.buffer_ring import BufferRing, batch_buffers

    ring = BufferRing(2)
    (a, b), lease_a = batch_buffers([100, 30], ring)
    assert a.numel() == 100 and b.numel() == 30 and b.data_ptr() - a.data_ptr() == 128  # parts 64-byte aligned
    _, lease_b = batch_buffers([100], ring)
    (c,), none = batch_buffers([100], ring)  # both lent: a buffer of its own, no lease
    assert none is None and lease_b.slot != lease_a.slot
    assert c.data_ptr() not in (lease_a.segment.data_ptr(), lease_b.segment.data_ptr())
    lease_a.give_back()
    (d,), lease_d = batch_buffers([50], ring)  # the segment given back, written again
    assert lease_d.slot == lease_a.slot and d.data_ptr() == a.data_ptr()
    lease_d.give_back()
    (e,), lease_e = batch_buffers([1000], ring)  # too small for this batch: that slot gets a larger segment
    assert lease_e.slot == lease_a.slot and e.numel() == 1000 and lease_e.segment.numel() >= 1000
