"""The torch logistic-regression probe: agreement with scikit-learn, the C search, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openslip.errors import ConfigError, DataError
from openslip.eval.logistic import LogisticConfig, fit_logistic, logistic_probe, search_c

TIGHT = LogisticConfig(tol=1e-9, max_iter=3000)


def _blobs(n: int, k: int, d: int, seed: int, sep: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = sep * np.random.default_rng(100 + k).normal(size=(k, d))
    y = np.arange(n) % k
    return centres[y] + rng.normal(size=(n, d)), y


def _sklearn_proba(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """scikit-learn's LogisticRegression(C=c) fitted to a tight tolerance (BLAS on one thread: with a busy
    machine, its threads only wait for each other)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return LogisticRegression(C=c, tol=1e-10, max_iter=20_000).fit(x, y).predict_proba(x)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fit_matches_sklearn_for_several_c(k: int) -> None:
    """Same C, same model: probabilities within 1e-5 of scikit-learn's LogisticRegression (binary: its
    binomial fit) and predictions equal, for C from 1e-3 to 100."""
    pytest.importorskip("sklearn")
    x, y = _blobs(120, k, 5, seed=k)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for c in (1e-3, 0.1, 1.0, 100.0):
        ref = _sklearn_proba(x, y, c)
        model = fit_logistic(xt, yt, c, config=TIGHT)
        proba = model.log_proba(xt, k).exp().numpy()
        np.testing.assert_allclose(proba, ref, atol=1e-5, err_msg=f"k={k} C={c}")
        assert (proba.argmax(1) == ref.argmax(1)).all()
        assert model.grad_max <= 1e-7


def test_absent_classes_and_warm_start() -> None:
    """Labels {0, 2, 3} of 5 classes: the fit covers those (as scikit-learn's classes_), the rest score -inf;
    a warm start from another C's solution lands on the same optimum as a cold start."""
    pytest.importorskip("sklearn")
    x, y = _blobs(90, 3, 4, seed=7)
    y = np.array([0, 2, 3])[y]
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = fit_logistic(xt, yt, 0.5, config=TIGHT)
    scores = model.log_proba(xt, 5)
    assert model.classes.tolist() == [0, 2, 3] and torch.isinf(scores[:, [1, 4]]).all()
    np.testing.assert_allclose(scores[:, [0, 2, 3]].exp().numpy(), _sklearn_proba(x, y, 0.5), atol=1e-5)
    warm = fit_logistic(xt, yt, 0.5, init=fit_logistic(xt, yt, 50.0, config=TIGHT), config=TIGHT)
    torch.testing.assert_close(warm.log_proba(xt, 5), scores, atol=1e-6, rtol=0)
    # chunked passes and float32 give the same model (float32 to its precision)
    chunked = fit_logistic(xt, yt, 0.5, config=LogisticConfig(tol=1e-9, max_iter=3000, chunk_rows=7))
    torch.testing.assert_close(chunked.log_proba(xt, 5), scores, atol=1e-6, rtol=0)
    single = fit_logistic(xt.float(), yt, 0.5, config=LogisticConfig(dtype="float32"))
    assert single.weight.dtype == torch.float32
    torch.testing.assert_close(single.log_proba(xt, 5).exp(), scores.exp(), atol=3e-3, rtol=0)


def test_preconditioning_keeps_the_model_on_rank_deficient_features() -> None:
    """Duplicated and nearly collinear columns (as real backbone features): the preconditioned and plain
    L-BFGS reach scikit-learn's model, the preconditioned one in fewer iterations."""
    pytest.importorskip("sklearn")
    x, y = _blobs(300, 4, 6, seed=11, sep=0.7)
    rng = np.random.default_rng(12)
    x = np.concatenate([x, x[:, :3], x[:, 3:] @ rng.normal(size=(3, 8)) + 1e-4 * rng.normal(size=(300, 8))], 1)
    x = (x - x.mean(0)) / x.std(0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for c in (0.01, 100.0):
        ref = _sklearn_proba(x, y, c)
        fits = [fit_logistic(xt, yt, c, config=LogisticConfig(tol=1e-7, max_iter=5000, precondition=p)) for p in (1, 0)]
        for fit in fits:
            np.testing.assert_allclose(fit.log_proba(xt, 4).exp().numpy(), ref, atol=1e-4, err_msg=f"C={c}")
    assert fits[0].n_iter < fits[1].n_iter, (fits[0].n_iter, fits[1].n_iter)


def test_search_prefers_strong_regularisation_when_samples_are_few() -> None:
    """100 samples in 60 dims, the signal in 5 of them: the train set is nearly separable through the noise
    dims, so weak regularisation overfits (held-out accuracy drops ~9 points); the search must pick a small C."""
    rng = np.random.default_rng(0)
    centres = np.zeros((2, 60))
    centres[:, :5] = np.random.default_rng(5).normal(size=(2, 5))

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % 2
        return torch.as_tensor(centres[y] + rng.normal(size=(n, 60))), torch.as_tensor(y)

    (tx, ty), (vx, vy) = split(100), split(600)
    c, score, log = search_c(tx, ty, vx, vy, num_classes=2, config=LogisticConfig(refine_steps=1))
    scores = dict(log)
    assert c <= 1e-2 and score >= scores[1e6] + 5, log


def test_search_prefers_weak_regularisation_when_a_contrast_is_needed() -> None:
    """The label is in f0 - f1 while both are dominated by a shared noise: the mean-difference direction that
    strong regularisation gives is poor, the contrast needs large weights, so the search must pick a large C."""
    rng = np.random.default_rng(1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % 3
        shared = 5 * rng.normal(size=(n, 1))
        x = np.concatenate([shared + 0.5 * y[:, None], shared, rng.normal(size=(n, 2))], axis=1)
        return torch.as_tensor(x + 0.05 * rng.normal(size=x.shape)), torch.as_tensor(y)

    (tx, ty), (vx, vy) = split(600), split(600)
    c, score, log = search_c(tx, ty, vx, vy, num_classes=3, config=LogisticConfig(grid=(-4.0, -2.0, 0.0, 2.0)))
    scores = dict(log)
    assert c >= 0.1 and score > 95 and scores[1e-4] < 60, log


def test_probe_with_validation_split_and_absent_class() -> None:
    x, y = _blobs(200, 3, 6, seed=3, sep=2.0)
    vx, vy = _blobs(60, 3, 6, seed=4, sep=2.0)
    sx, sy = _blobs(90, 3, 6, seed=5, sep=2.0)
    t = torch.as_tensor
    cfg = LogisticConfig(grid=(-2.0, 0.0, 2.0), refine_steps=1)
    m, scores = logistic_probe(
        t(x).float(), t(y), t(sx).float(), t(sy), num_classes=4, val_x=t(vx).float(), val_y=t(vy), config=cfg
    )
    assert scores.shape == (90, 4) and scores.dtype == torch.float64 and torch.isinf(scores[:, 3]).all()
    assert m["top1"] > 90 and m["num_train"] == 200 and 3 <= m["num_c_tried"] <= 5 and 1e-3 <= m["C"] <= 1e3
    torch.testing.assert_close(scores[:, :3].exp().sum(1), torch.ones(90, dtype=torch.float64))


def test_bad_inputs_raise_clear_errors() -> None:
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    probe = logistic_probe
    with pytest.raises(DataError, match="train split is empty"):
        probe(x[:0], y[:0], x, y, num_classes=2)
    with pytest.raises(DataError, match="20 feature rows but labels"):
        probe(x, y[:10], x, y, num_classes=2)
    with pytest.raises(DataError, match="test features have 3 dims"):
        probe(x, y, x[:, :3], y, num_classes=2)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="1 of 20 train feature rows contain NaN"):
        probe(bad, y, x, y, num_classes=2)
    with pytest.raises(DataError, match="test feature rows contain NaN"):
        probe(x, y, bad, y, num_classes=2)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.1"):
        probe(x, y + 1, x, y, num_classes=2)
    with pytest.raises(DataError, match="at least 2 classes"):
        probe(x, torch.zeros(20, dtype=torch.long), x, y, num_classes=2)
    with pytest.raises(DataError, match="given together"):
        probe(x, y, x, y, num_classes=2, val_x=x)
    with pytest.raises(ConfigError, match="unknown metric"):
        probe(x, y, x, y, num_classes=2, metric="top3")
    with pytest.raises(ConfigError):
        LogisticConfig(dtype="float16")
    with pytest.raises(ConfigError):
        LogisticConfig(tol=0.0)
    with pytest.raises(ConfigError):
        fit_logistic(x, y, 0.0)
