"""The training loader: disjoint rank x worker splits covering each epoch, and exact resumption."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openslip.data.formats.shards import make_shards
from openslip.data.loader import build_train_loader, round_robin
from openslip.data.sources import open_source, open_sources

N = 1000
SMALL = 200


def _transform(img: Image.Image) -> dict[str, torch.Tensor]:
    """A stand-in for SLIPTransform: the pixels, plus a random view to check that augmentation RNG is resumed."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    return {"image": x, "view1": x + torch.rand(1, 1, 1), "view2": x * float(np.random.rand())}


def _tokenize(texts: list[str]) -> torch.Tensor:
    """A stand-in for the CLIP tokenizer: the sample number at position 0 of a [B, 77] LongTensor."""
    out = torch.zeros(len(texts), 77, dtype=torch.long)
    out[:, 0] = torch.tensor([int(t.split()[-1]) for t in texts])
    return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 tiny images; row i has caption "sample i"."""
    root = tmp_path_factory.mktemp("loader")
    (root / "img").mkdir()
    lines = ["image,caption"]
    for i in range(N):
        Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,sample {i}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    (root / "small.csv").write_text("\n".join(lines[: SMALL + 1]) + "\n")
    return root / "m.csv"


@pytest.fixture(scope="module")
def small(manifest: Path) -> Path:
    """The first 200 rows: resumption tests iterate several epochs, so they use fewer samples."""
    return manifest.parent / "small.csv"


@pytest.fixture(scope="module")
def shards(manifest: Path) -> Path:
    out = manifest.parent / "shards"
    make_shards(open_source(str(manifest)), out, shard_size=50, seed=1)  # 20 shards: 5 per (rank, worker)
    return out


@pytest.fixture(scope="module")
def uneven_shards(small: Path) -> Path:
    out = small.parent / "uneven"
    make_shards(open_source(str(small)), out, shard_size=12, seed=1)  # 17 shards, the last one of 8
    return out


@pytest.fixture(scope="module")
def second(manifest: Path) -> Path:
    """Rows 200-299 of the images as a manifest of their own: concatenated after `small`, sample i is row i."""
    lines = ["image,caption"] + [f"img/{i}.png,sample {i}" for i in range(SMALL, SMALL + 100)]
    (manifest.parent / "second.csv").write_text("\n".join(lines) + "\n")
    return manifest.parent / "second.csv"


def _loader(source, *, rank=0, world_size=1, num_workers=2, batch_size=10, seed=0, **kw):
    return build_train_loader(
        source, _transform, _tokenize, batch_size, num_workers, seed, rank, world_size, max_skip_rate=None, **kw
    )


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def _ids(batches: list[dict]) -> list[int]:
    return [i for b in batches for i in b["id"].tolist()]


def test_map_two_ranks_two_workers_cover_the_epoch_once(manifest: Path):
    source = open_source(str(manifest))
    per_rank = []
    for rank in range(2):
        loader = _loader(source, rank=rank, world_size=2)
        assert len(loader) == 50
        batches = list(loader)
        assert len(batches) == 50 and all(b["image"].shape == (10, 3, 8, 8) for b in batches)
        assert all(b["text"].shape == (10, 77) and b["text"].dtype == torch.long for b in batches)
        for b in batches:  # the caption travels with its image: manifest row i says "sample i"
            assert torch.equal(b["text"][:, 0], b["id"])
            assert torch.equal((b["image"][:, 0, 0, 0] * 255).round().long(), b["id"] % 256)
        per_rank.append(_ids(batches))
        assert loader.epoch == 1 and loader.position == 0 and loader.skips.seen == 500
    assert sorted(per_rank[0] + per_rank[1]) == list(range(N))


def test_shards_two_ranks_two_workers_cover_the_epoch_once(shards: Path):
    source = open_source(str(shards))
    ids, texts = [], []
    for rank in range(2):
        loader = _loader(source, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 50
        ids += _ids(batches)
        texts += [t for b in batches for t in b["text"][:, 0].tolist()]
    assert len(ids) == N == len(set(ids)) and sorted(texts) == list(range(N))


def test_uneven_shards_give_every_rank_the_same_count_of_disjoint_batches(uneven_shards: Path):
    source = open_source(str(uneven_shards))
    counts, seen = [], []
    for rank in range(2):
        loader = _loader(source, rank=rank, world_size=2)
        batches = list(loader)
        ids = _ids(batches)
        counts.append(len(batches))
        seen.append(set(ids))
        assert len(ids) == len(set(ids))
    assert counts[0] == counts[1] > 0 and not seen[0] & seen[1]
    # the next epoch reads another shard order, and the same seed gives the same order
    loader = _loader(source, rank=0, world_size=2)
    first = _ids(list(loader))
    assert set(first) == seen[0] and _ids(list(loader)) != first


@pytest.mark.parametrize("resume_workers", [2, 1, 0])
def test_map_resume_mid_epoch_gives_the_remaining_batches(small: Path, resume_workers: int):
    source = open_source(str(small))
    full = list(itertools.islice(_loader(source, rank=1, world_size=2, seed=7).forever(), 13))  # into epoch 2
    interrupted = _loader(source, rank=1, world_size=2, seed=7)
    taken = list(itertools.islice(interrupted.forever(), 7))
    state = interrupted.state_dict()
    assert (state["epoch"], state["position"], state["seed"]) == (0, 7, 7)
    resumed = _loader(source, rank=1, world_size=2, seed=123, num_workers=resume_workers)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(resumed.forever(), 6))
    _same_batches(taken + rest, full)
    assert resumed.skips.seen == 130 and resumed.epoch == 1


def test_shards_resume_mid_epoch_gives_the_remaining_batches(uneven_shards: Path):
    source = open_source(str(uneven_shards))
    reference = _loader(source, rank=0, world_size=2, seed=3)
    n = len(reference)
    full = list(itertools.islice(reference.forever(), n + 5))
    for k in (3, 6):  # resume at a batch of worker 1, then of worker 0
        interrupted = _loader(source, rank=0, world_size=2, seed=3)
        taken = list(itertools.islice(interrupted.forever(), k))
        resumed = _loader(source, rank=0, world_size=2, seed=0)
        resumed.load_state_dict(interrupted.state_dict())
        rest = list(itertools.islice(resumed.forever(), n + 5 - k))
        _same_batches(taken + rest, full)


def test_concatenated_manifests_cover_the_epoch_resume_exactly_and_name_their_files(small: Path, second: Path):
    source = open_sources([str(small), str(second)])
    loader = _loader(source, batch_size=10)
    batches = list(loader)
    assert len(batches) == 30 and sorted(_ids(batches)) == list(range(SMALL + 100))
    for b in batches:  # the ids index the concatenation: caption and pixels of row i in either file
        assert torch.equal(b["text"][:, 0], b["id"])
        assert torch.equal((b["image"][:, 0, 0, 0] * 255).round().long(), b["id"] % 256)
    assert loader.describe_ids([3, SMALL + 50]) == [f"{small}#img/3.png", f"{second}#img/{SMALL + 50}.png"]
    full = list(itertools.islice(_loader(source, seed=5).forever(), 35))  # into epoch 2
    interrupted = _loader(source, seed=5)
    taken = list(itertools.islice(interrupted.forever(), 12))
    resumed = _loader(source, seed=0, num_workers=1)
    resumed.load_state_dict(interrupted.state_dict())
    _same_batches(taken + list(itertools.islice(resumed.forever(), 23)), full)


def test_concatenated_shard_sets_resume_exactly(small: Path, second: Path, tmp_path: Path):
    make_shards(open_source(str(small)), tmp_path / "a", shard_size=30, seed=1)  # 7 shards, the last of 20
    make_shards(open_source(str(second)), tmp_path / "b", shard_size=25, seed=2)  # 4 shards
    source = open_sources([str(tmp_path / "a"), str(tmp_path / "b")])
    reference = _loader(source, rank=1, world_size=2, seed=4)
    n = len(reference)
    full = list(itertools.islice(reference.forever(), n + 4))
    texts = [t for b in full[:n] for t in b["text"][:, 0].tolist()]
    assert len(texts) == len(set(texts)) == n * 10  # one epoch of this rank: no sample twice
    interrupted = _loader(source, rank=1, world_size=2, seed=4)
    taken = list(itertools.islice(interrupted.forever(), 5))
    resumed = _loader(source, rank=1, world_size=2, seed=0)
    resumed.load_state_dict(interrupted.state_dict())
    _same_batches(taken + list(itertools.islice(resumed.forever(), n - 1)), full)
    assert any(loader_id >> 32 >= 7 for loader_id in _ids(full))  # shards of the second set are read too


def test_map_resume_across_world_sizes_keeps_global_batches(small: Path):
    source = open_source(str(small))
    two = [list(_loader(source, rank=r, world_size=2, batch_size=5, num_workers=0)) for r in range(2)]
    global_two = [set(_ids([a, b])) for a, b in zip(two[0], two[1], strict=True)]
    one = _loader(source, world_size=1, batch_size=10, num_workers=0)
    state = _loader(source, rank=0, world_size=2, batch_size=5, num_workers=0).state_dict()
    state["position"] = 6
    one.load_state_dict(state)
    assert one.position == 6 and len(global_two) == 20
    assert [set(b["id"].tolist()) for b in one] == global_two[6:]


def test_drop_last_false_keeps_the_tail_equal_on_every_rank(manifest: Path):
    source = open_source(str(manifest))
    sizes = [
        [len(b["id"]) for b in _loader(source, rank=r, world_size=3, batch_size=64, drop_last=False)] for r in (0, 2)
    ]
    assert sizes[0] == sizes[1] == [64] * 5 + [13]  # 1000 // 3 = 333 per rank


def test_loader_leaves_the_callers_rng_alone(small: Path):
    source = open_source(str(small))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(_loader(source, num_workers=0)))
    assert torch.equal(torch.rand(3), expected)


def test_round_robin_matches_dataloader_order():
    assert round_robin([2, 1, 3]) == [0, 1, 2, 0, 2, 2]
    assert round_robin([2, 1, 3], start=2) == [2, 0, 1, 2, 0, 2]


def _policy(img: Image.Image) -> dict[str, torch.Tensor]:
    import os

    return {"image": torch.tensor([os.sched_getscheduler(0)])}


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_IDLE"), reason="Linux scheduling policies")
def test_workers_run_at_idle_priority_when_asked(small: Path) -> None:
    import os

    base = os.sched_getscheduler(0)
    for idle, expected in ((False, base), (True, os.SCHED_IDLE)):
        loader = build_train_loader(
            open_source(str(small)), _policy, _tokenize, batch_size=4, num_workers=1, idle_workers=idle
        )
        batch = next(iter(loader))
        assert batch["image"].flatten().tolist() == [expected] * 4
    assert os.sched_getscheduler(0) == base  # the training process keeps its priority


BURN_S = 0.002  # CPU time each sample of `_burning` costs


def _burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU time, on the clock the loader reads."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def _burning(img: Image.Image) -> dict[str, torch.Tensor]:
    """A transform that costs BURN_S of CPU time."""
    _burn(BURN_S)
    return _transform(img)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["map", "shards"])
def test_loader_counts_the_cpu_time_of_its_batches(
    small: Path, uneven_shards: Path, kind: str, num_workers: int
) -> None:
    """`cpu_s` is the time spent building the batches handed out (in the workers, or here with 0 workers), not the
    time this process spends between batches."""
    source = open_source(str(small if kind == "map" else uneven_shards))
    loader = build_train_loader(source, _burning, _tokenize, batch_size=4, num_workers=num_workers)
    it = iter(loader)
    for _ in range(3):
        next(it)
        _burn(0.05)  # the training step: must not count
    assert 12 * BURN_S <= loader.cpu_s < 12 * BURN_S + 0.05 * 3


def _mode(img: Image.Image) -> dict[str, torch.Tensor]:
    """A transform that reports whether autograd was off while it ran."""
    return {"image": torch.tensor([float(torch.is_inference_mode_enabled())])}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["map", "shards"])
def test_views_render_without_autograd_and_batches_train(
    small: Path, uneven_shards: Path, kind: str, num_workers: int
) -> None:
    """The views are made under inference mode (cheaper small torch calls), yet a batch is an ordinary tensor: a
    training step may save it for backward, which an inference tensor refuses."""
    source = open_source(str(small if kind == "map" else uneven_shards))
    batch = next(iter(build_train_loader(source, _mode, _tokenize, batch_size=4, num_workers=num_workers)))
    assert batch["image"].flatten().tolist() == [1.0] * 4
    assert not batch["image"].is_inference()
    weight = torch.ones(1, requires_grad=True)
    (batch["image"] * weight).sum().backward()
    assert weight.grad is not None and weight.grad.item() == 4.0


def _pid_transform(img: Image.Image) -> dict[str, torch.Tensor]:
    """`_transform` plus the process that rendered the sample."""
    return {**_transform(img), "pid": torch.tensor(os.getpid())}


@pytest.mark.parametrize("kind", ["map", "shards"])
def test_forever_keeps_its_workers_across_epochs_and_gives_the_same_batches(
    small: Path, uneven_shards: Path, kind: str
):
    source = open_source(str(small if kind == "map" else uneven_shards))

    def loader(workers: int):
        return build_train_loader(source, _pid_transform, _tokenize, 40, workers, 5, max_skip_rate=None)

    per_epoch = loader(2)
    n = len(per_epoch)  # map: 5 batches of 40 per epoch; shards: what the streams give
    expected = [b for _ in range(3) for b in per_epoch]  # three epochs, each with freshly started workers
    got = list(itertools.islice(loader(2).forever(), 3 * n))
    for x, y in zip(got, expected, strict=True):
        assert torch.equal(x["id"], y["id"]) and torch.equal(x["view1"], y["view1"])
    pids = {int(p) for b in got for p in b["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers served all three epochs
    # a loader resumed mid-epoch 1 with persistent workers continues exactly
    interrupted = loader(2)
    taken = list(itertools.islice(interrupted.forever(), n + 2))
    resumed = loader(2)
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(itertools.islice(resumed.forever(), 2 * n - 2))
    assert [b["id"].tolist() for b in taken + rest] == [b["id"].tolist() for b in expected]


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_training_batches_carry_ids_trimmed_on_the_host(augment: str):
    """build_train_data's tokenizer trims each batch's ids at its last EOT in the workers (models.slip.trim_tokens),
    so a GPU step never reads that length back from the device (the embeddings are the same: tests/test_models.py)."""
    from openslip.models.slip import trimmed_text_length
    from openslip.train.data import build_train_data
    from openslip.train.recipes import make_config

    cfg = make_config({"model": "slip_vit_micro", "data": {"augment": augment}, "train": {"batch_size": 8}})
    data = build_train_data(cfg, 32, ("image", "view1", "view2"), True, 0, 1, torch.device("cpu"))
    text = next(iter(data.loader))["text"]
    assert text.shape[1] == trimmed_text_length(text) < 77 and text.is_contiguous()
    sot, eot = 49406, 49407  # whole captions, SOT to EOT
    assert (text[:, 0] == sot).all() and ((text == eot).sum(dim=1) == 1).all()
