"""Evaluations on 2 gloo processes give the one-process metrics, with every sample counted exactly once."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed
from torch.utils.data import Dataset

from openslip.eval.features import extract_features, gather_rows, shard_range


class _Indexed(Dataset):
    """Item i is (a feature vector that encodes i, label i % 3)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(i), 1.0]), i % 3


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _body(info) -> dict:
    from openslip.eval.datasets import open_classification, open_retrieval
    from openslip.eval.retrieval import evaluate_retrieval
    from openslip.eval.zero_shot import evaluate_zero_shot
    from openslip.models import create_model

    out: dict = {"local": gather_rows(torch.full((info.rank + 1, 2), float(info.rank)))}  # unequal shard sizes
    for n in (7, 1):  # 1: rank 1 holds no sample at all
        feats, labels = extract_features(_identity, _Indexed(n), batch_size=2, normalize=False, progress=False)
        out[f"ids{n}"], out[f"labels{n}"] = feats[:, 0].long(), labels
    torch.manual_seed(0)
    model = create_model("slip_vit_micro").eval()
    ds = open_classification("demo_shapes", image_size=32, n=37)  # odd size: shards of 19 and 18
    out["metrics"], out["logits"], out["labels"] = evaluate_zero_shot(model, ds, batch_size=8)
    out["retrieval"] = evaluate_retrieval(model, open_retrieval("demo", image_size=32, n=21), batch_size=8)
    return out


def test_shard_ranges_partition() -> None:
    for n in (0, 1, 5, 7, 100):
        for w in (1, 2, 3, 8):
            ranges = [shard_range(n, r, w) for r in range(w)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


@pytest.mark.multiprocess
def test_two_processes_match_one_process() -> None:
    from openslip.eval.datasets import open_classification, open_retrieval
    from openslip.eval.retrieval import evaluate_retrieval
    from openslip.eval.zero_shot import evaluate_zero_shot
    from openslip.models import create_model

    torch.manual_seed(0)
    model = create_model("slip_vit_micro").eval()
    single, logits, labels = evaluate_zero_shot(model, open_classification("demo_shapes", image_size=32, n=37))
    single_r = evaluate_retrieval(model, open_retrieval("demo", image_size=32, n=21))
    for r in run_distributed(_body, 2):
        assert r["local"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        for n in (7, 1):
            assert r[f"ids{n}"].tolist() == list(range(n))  # every sample once, in dataset order
            assert r[f"labels{n}"].tolist() == [i % 3 for i in range(n)]
        assert r["metrics"]["num_samples"] == 37
        assert r["labels"].tolist() == labels.tolist()
        torch.testing.assert_close(r["logits"], logits, atol=1e-5, rtol=1e-5)
        for k in ("top1", "top5", "mean_per_class"):
            assert r["metrics"][k] == pytest.approx(single[k])
        for k, v in single_r.items():
            assert r["retrieval"][k] == pytest.approx(v)
