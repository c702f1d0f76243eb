"""Weighted sources (`data.train=[a::0.7,b::0.3]`) and resampled shards (`data.resampled=true`),
docs/TRAINING.md, 'Weighted sources and resampled shards': the observed mix, exact resume through
`openslip train`, bad settings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_utils import assert_resumes_bit_exactly, overrides

from openslip.cli import main
from openslip.data.loader import build_train_loader
from openslip.data.sources import open_sources
from openslip.overrides import parse_overrides
from openslip.train.data import build_train_data
from openslip.train.recipes import make_config

A, B = 300, 200  # samples of the two sources: their sizes (0.6 / 0.4) differ from the weights tested (0.7 / 0.3)
MIX_SAMPLES = 10_000


def _manifest(root: Path, name: str, first: int, count: int) -> Path:
    """`count` tiny images; row i has caption "sample {first + i}"."""
    (root / name).mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(first, first + count):
        Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(root / name / f"{i}.png")
        lines.append(f"{name}/{i}.png,sample {i}")
    (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return root / f"{name}.csv"


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("streams")
    return _manifest(root, "a", 0, A), _manifest(root, "b", A, B)


def _shards(manifest: Path, size: int) -> Path:
    out = manifest.parent / f"{manifest.stem}_shards{size}"
    if not out.exists():
        assert main(["data", "make-shards", str(manifest), str(out), "--shard-size", str(size)]) == 0
    return out


def _caption_numbers(batch: dict) -> list[int]:
    return [int(c.split()[-1]) for c in batch["caption"]]


def _observed_share_of_a(args: list[str], tmp_path: Path) -> float:
    """Share of source a among the first MIX_SAMPLES samples of the loader `openslip train` would build. The
    views are replaced by a stand-in and the captions left untokenized: the count needs only which samples came."""
    cfg = make_config(parse_overrides(overrides(tmp_path / "run", "model=clip_vit_micro", *args)))
    data = build_train_data(cfg, 32, ("image",), True, 0, 1, torch.device("cpu"))
    data.loader._common.transform = lambda image: torch.zeros(1)
    data.loader._common.tokenize = None
    seen: list[int] = []
    for batch in data.loader.forever():
        seen += _caption_numbers(batch)
        if len(seen) >= MIX_SAMPLES:
            break
    return float(np.mean(np.asarray(seen[:MIX_SAMPLES]) < A))


def _binomial_bound(p: float, n: int) -> float:
    """4 standard deviations of a share of n independent draws: a seeded run is outside it with odds < 1e-4."""
    return 4 * math.sqrt(p * (1 - p) / n)


def test_weighted_manifests_give_the_weights_mix(tmp_path, manifests):
    a, b = manifests
    share = _observed_share_of_a([f"data.train=[{a}::0.7,{b}::0.3]"], tmp_path)
    print(f"map-style 0.7/0.3: share of a over {MIX_SAMPLES} samples = {share:.4f}")
    assert abs(share - 0.7) <= _binomial_bound(0.7, MIX_SAMPLES)
    # without weights the sources weigh by their sizes, as before: every sample once per epoch
    unweighted = _observed_share_of_a([f"data.train=[{a},{b}]"], tmp_path)
    assert abs(unweighted - A / (A + B)) <= 0.01


def test_resampled_weighted_shards_give_the_weights_mix(tmp_path, manifests):
    # Shards of one sample: each draw is one independent sample, so the binomial bound holds as for samples (with
    # shards of s samples the share varies like that of n / s draws).
    a, b = (_shards(m, 1) for m in manifests)
    args = [f"data.train=['{a}::0.7','{b}::0.3']", "data.resampled=true"]
    share = _observed_share_of_a(args, tmp_path)
    print(f"resampled shards 0.7/0.3: share of a over {MIX_SAMPLES} samples = {share:.4f}")
    assert abs(share - 0.7) <= _binomial_bound(0.7, MIX_SAMPLES)


def test_a_weighted_epoch_reads_each_source_without_repeats_up_to_its_size(manifests):
    """Source b at weight 0.7 of 500 positions is drawn ~350 times: all its 200 samples before any repeats."""
    a, b = manifests
    loader = build_train_loader(
        open_sources([f"{a}::0.3", f"{b}::0.7"]), lambda image: torch.zeros(1), None, 10, max_skip_rate=None
    )
    ids = np.concatenate([batch["id"].numpy() for batch in loader])
    from_b = ids[ids >= A]
    assert len(set(from_b[:B].tolist())) == B  # the first lap over b is a permutation of it
    assert len(set(ids[ids < A].tolist())) == len(ids[ids < A])  # a, drawn ~150 times of 300: no repeat


def test_resampled_map_style_draws_with_replacement(manifests):
    a, _ = manifests
    loader = build_train_loader(open_sources(str(a)), lambda image: torch.zeros(1), None, 10, resampled=True)
    ids = np.concatenate([batch["id"].numpy() for batch in loader])
    assert len(ids) == A and len(set(ids.tolist())) < A  # a nominal epoch of 300 draws: some samples repeat


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_shard_streams_resume_exactly_across_epochs(manifests, workers):
    """A loader resumed mid-epoch from its state continues every worker's draws: the same batches, also after
    the next epoch starts (persistent workers move to the next epoch's draws)."""
    shards = _shards(manifests[0], 7)  # 43 shards, the last of 6: batches of 10 cut across shards

    def loader():
        return build_train_loader(
            open_sources(str(shards)), lambda image: torch.zeros(1), None, 10, workers, resampled=True, seed=3
        )

    assert len(loader()) == A // 10
    whole = loader().forever()
    expected = [next(whole)["caption"] for _ in range(45)]  # 1.5 nominal epochs
    whole.close()
    first = loader()
    stream = first.forever()
    got = [next(stream)["caption"] for _ in range(17)]
    state = first.state_dict()
    stream.close()
    resumed = loader()
    resumed.load_state_dict(state)
    stream = resumed.forever()
    got += [next(stream)["caption"] for _ in range(45 - 17)]
    stream.close()
    assert got == expected
    numbers = [int(c.split()[-1]) for batch in expected for c in batch]
    assert len(set(numbers)) < len(numbers)  # shards are drawn with replacement


def test_resampled_ranks_draw_their_own_shards_for_the_same_nominal_epoch(manifests):
    """Two ranks of a 2-process run (built here side by side): equal batch counts, the shards' total size in all,
    and draws of their own; fewer shards than ranks x workers is no error when drawing with replacement."""
    shards = _shards(manifests[1], 100)  # 2 shards for 2 ranks x 2 workers

    def rank(r: int) -> list[list[str]]:
        loader = build_train_loader(
            open_sources(str(shards)), lambda image: torch.zeros(1), None, 10, 2, 0, r, 2, resampled=True
        )
        assert len(loader) == B // (2 * 10)
        return [batch["caption"] for batch in loader]

    zero, one = rank(0), rank(1)
    assert len(zero) == len(one) == 10 and zero != one


@pytest.mark.parametrize("kind", ["weighted", "resampled"])
def test_weighted_and_resampled_runs_resume_bit_exactly(tmp_path, manifests, kind):
    """`openslip train` resumed from its step-2 checkpoint ends with the weights of the uninterrupted run."""
    a, b = manifests
    if kind == "weighted":
        data = [f"data.train=[{a}::0.7,{b}::0.3]"]
    else:  # weighted shards, drawn with replacement; shards of 7 so that the checkpoint falls inside a shard
        data = [f"data.train=['{_shards(a, 7)}::0.7','{_shards(b, 7)}::0.3']", "data.resampled=true"]
    args = [*data, "model=clip_vit_micro", "train.steps=4", "ckpt.every_steps=2", "ckpt.keep_last=5"]
    assert_resumes_bit_exactly(tmp_path / "run", args)


@pytest.mark.parametrize(
    "train,extra,needle",
    [
        ("[{a}::0.7,{b}]", [], "data.train[1] ({b}) has no weight while others have"),
        ("{a}::0.7", [], "a weight shares the samples among two or more sources"),
        ("[{a}::0.7]", [], "a weight shares the samples among two or more sources"),
        ("[{a}::x,{b}::0.3]", [], "weight 'x' is not a number"),
        ("[{a}::0,{b}::1]", [], "weight 0 must be a positive number"),
        ("[{a}::-1,{b}::1]", [], "weight -1 must be a positive number"),
        ("[{a}::nan,{b}::1]", [], "weight nan must be a positive number"),
        ("[{a}::0.5,{a}::0.5]", [], "lists '{a}' twice"),
        ("['{sa}::0.7','{sb}::0.3']", [], "add data.resampled=true"),
    ],
)
def test_bad_weights_are_one_line_errors(tmp_path, capsys, manifests, train, extra, needle):
    a, b = manifests
    names = {"a": a, "b": b, "sa": _shards(a, 7), "sb": _shards(b, 7)}
    args = [f"data.train={train.format(**names)}", "model=clip_vit_micro", *extra]
    assert main(["train", *overrides(tmp_path / "run", *args)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle.format(**names) in err and len(err.splitlines()) == 1, err
