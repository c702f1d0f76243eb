"""The logistic-regression linear probe (CLIP paper, App. A.3; docs/DESIGN.md, 'Evaluation'), solved in torch.

L2-regularised multinomial logistic regression on frozen, standardised features. For the K classes present
in the fit (features x_i, labels y_i, weights W [K, D], intercepts b [K], not penalised) it minimises

    sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C)

which is scikit-learn's ``LogisticRegression(C=C)`` objective (l2 penalty, ``fit_intercept=True``; its
docs write it ``C * sum_i loss_i + ||W||^2 / 2``, the same minimiser). Like scikit-learn's lbfgs solver
(``_logistic_regression_path``: ``l2_reg_strength = 1 / (C * n_samples)``), the solver works on that
objective divided by N, ``mean_i CE + ||W||^2 / (2 C N)``, and the gradient tolerance ``tol`` (max |g|) is
on this mean-scaled objective, as scikit-learn's ``tol`` (same default, 1e-4); so one ``C`` means one
model in both. Binary tasks: scikit-learn fits one weight vector w (binomial loss) with ``||w||^2 / (2 C)``;
the two-class softmax with (w0, w1) and ``(||w0||^2 + ||w1||^2) / (2 C')`` has the same optimum
(w = w1 - w0 = 2 w1) when C' = C / 2, which is what is solved for K = 2. The tests check agreement with
scikit-learn.

Solver: ``torch.optim.LBFGS`` (strong-Wolfe line search, history ``history_size``), full batch, on the
device the train features are on, in float64 (``dtype="float32"`` halves memory and is much faster on
GPUs with slow float64, at the price of a looser reachable tolerance, ~1e-4). The loss and gradient are
computed in closed form (softmax minus one-hot), ``chunk_rows`` samples at a time. By default L-BFGS runs
in the features' eigenbasis scaled by a rough Hessian (``fit_logistic``; ``precondition``): the same
objective, but fits on correlated or rank-deficient features (as real backbones give) converge in tens
to a hundred-odd iterations instead of stalling at ``max_iter``. The stopping test is on the true gradient
for W and b after every iteration.

Memory: the standardised train features (N x D in ``dtype``: one copy, the held-out split is a view),
one chunk of logits and probabilities (2 x chunk_rows x K; by default about 2^25 / K rows, i.e. at most
~0.5 GiB in float64), the D x D preconditioner, and L-BFGS's 2 x history_size x (D + 1) x K numbers.
ImageNet-size (1.28M x 768, 1000 classes): ~7.9 GB of features in float64 (3.9 GB in float32); the full
N x K logits (10 GB) never exist.

The C search (``search_c``): log10 C on ``grid`` (evaluated in increasing order), then ``refine_steps``
rounds trying best +- step with the step halving from 1; ties go to the smaller C. Each fit is warm-started
from the solution at the nearest C already solved, and the final refit on the whole train split from the
chosen C's. Cost: at most ``len(grid) + 2 * refine_steps`` fits on the fit split (fewer when a refinement
point was already tried) plus one refit: 7 + 6 + 1 = 14 with the defaults; each fit is at most ``max_iter``
L-BFGS iterations of about one pass (two N x D x K matrix products) over the features; warm starts
keep most fits to tens of iterations, up to a few hundred on strongly correlated features. Plus one
N x D x D pass for the preconditioner (``feature_eig``), shared by all fits. scikit-learn is not needed
at run time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from openslip.errors import ConfigError, DataError
from openslip.eval.datasets import split_indices
from openslip.eval.metrics import CLASSIFICATION_METRICS, classification_metrics

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_CHUNK_ELEMENTS = 2**25  # logits per chunk when chunk_rows is 0 (auto)
_CURVATURE = 0.25  # the largest softmax curvature p (1 - p), the data part of the preconditioner
_SMALL_PROBLEM = 2**24  # N x D x K below which a CPU fit runs on one thread (cpu_threads=0)


@contextlib.contextmanager
def _threads(device: torch.device, work: int, wanted: int) -> Iterator[None]:
    """Run the block with ``wanted`` torch threads on the CPU (0: one thread when ``work`` is small)."""
    n = wanted or (1 if work < _SMALL_PROBLEM else 0)
    old = torch.get_num_threads()
    if device.type != "cpu" or not n or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True, kw_only=True)
class LogisticConfig:
    """The C search and the solver of the logistic-regression probe."""

    grid: tuple[float, ...] = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
    """Coarse log10(C) values tried first (CLIP swept 1e-6 .. 1e6)."""
    refine_steps: int = 3
    """Halvings of the step around the best coarse value (steps 1, 0.5, 0.25 in log10 units)."""
    max_iter: int = 500
    """L-BFGS iterations per fit (features are standardised and fits warm-started, so few are needed)."""
    holdout: float = 0.2
    """Fraction of the train split held out to choose C when no validation split is given."""
    tol: float = 1e-4
    """Stop a fit when max |gradient| of the mean-scaled objective is below this (scikit-learn's ``tol`` and
    default). It is loose enough that a fit at C >= ~1e4 warm-started from C = 100 often stops at once (as with
    scikit-learn's warm start): such C are then reported as tied with a smaller one, and ties go to the smaller
    C. 1e-6 separates them, at ~2-4x the L-BFGS iterations on correlated features, for the same accuracy in
    our measurements. In float32, tolerances much below 1e-5 may be out of reach (its gradients' resolution)."""
    dtype: str = "float64"
    """Solver precision: ``float64`` (default, matches scikit-learn) or ``float32`` (large problems on GPU)."""
    history_size: int = 10
    """L-BFGS curvature pairs kept (scipy's default); memory 2 x history_size x (D + 1) x K numbers."""
    chunk_rows: int = 0
    """Samples per chunk of the loss/gradient pass (bounds the chunk x K logits); 0: about 2^25 / K."""
    precondition: bool = True
    """Run L-BFGS in the eigenbasis of the features, scaled by a rough Hessian (``fit_logistic``): same
    objective, far fewer iterations on correlated features, for one extra N x D^2 pass per feature matrix."""
    cpu_threads: int = 0
    """torch threads for fits on the CPU; 0: one thread for small problems (N x D x K < 2^24: on an idle
    2-core machine two threads gain ~20% there, but while another process is busy on the cores they slow
    each pass 10-100x), torch's setting otherwise."""

    def __post_init__(self) -> None:
        if not self.grid or self.refine_steps < 0 or self.max_iter < 1 or not 0 < self.holdout < 1:
            raise ConfigError("logistic probe: need a non-empty grid, refine_steps >= 0, max_iter >= 1, 0<holdout<1")
        if not all(math.isfinite(c) for c in self.grid):
            raise ConfigError(f"logistic probe: grid values are log10(C) and must be finite, got {self.grid}")
        if not self.tol > 0:
            raise ConfigError(f"logistic probe: tol must be positive, got {self.tol}")
        if self.history_size < 1 or self.chunk_rows < 0 or self.cpu_threads < 0:
            raise ConfigError("logistic probe: need history_size >= 1, chunk_rows >= 0, cpu_threads >= 0")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"logistic probe: dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")


@dataclass
class LogisticModel:
    """A fitted probe: ``weight`` [K, D] and ``bias`` [K] over ``classes`` [K] (the labels present in the fit)."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: torch.Tensor
    C: float
    n_iter: int
    """L-BFGS iterations of the fit (0: the warm start already met the tolerance)."""
    grad_max: float
    """max |gradient| of the mean-scaled objective at the solution."""
    loss: float
    """The mean-scaled objective at the solution."""
    converged: bool
    """grad_max <= tol (else the fit stopped at max_iter or on a stalled line search)."""

    def log_proba(self, x: torch.Tensor, num_classes: int, chunk_rows: int = 0) -> torch.Tensor:
        """[N, num_classes] class log-probabilities (float64, on x's device); classes absent from the fit: -inf."""
        rows = chunk_rows or _auto_chunk(len(self.classes))
        out = torch.full((x.shape[0], num_classes), float("-inf"), dtype=torch.float64, device=x.device)
        cols = self.classes.to(x.device)
        for i in range(0, x.shape[0], rows):
            xc = x[i : i + rows].to(self.weight.device, self.weight.dtype)
            logp = torch.log_softmax(torch.addmm(self.bias, xc, self.weight.T), dim=1)
            out[i : i + rows, cols] = logp.to(x.device, torch.float64)
        return out


def _auto_chunk(k: int) -> int:
    return max(256, _CHUNK_ELEMENTS // max(k, 1))


def _loss_grad(
    x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean CE + lam ||w||^2 / N, its gradients for w and b); x [N, D], t [N] in 0..K-1."""
    n = x.shape[0]
    loss = torch.zeros((), dtype=w.dtype, device=w.device)
    gw, gb = torch.zeros_like(w), torch.zeros_like(b)
    for i in range(0, n, rows):
        xc, tc = x[i : i + rows], t[i : i + rows]
        z = torch.addmm(b, xc, w.T)
        lse = torch.logsumexp(z, dim=1, keepdim=True)
        loss += lse.sum() - z.gather(1, tc[:, None]).sum()
        p = z.sub_(lse).exp_()  # softmax, in place
        p.scatter_add_(1, tc[:, None], torch.full_like(lse, -1.0))  # minus the one-hot target
        gw.addmm_(p.T, xc)
        gb += p.sum(0)
    loss = loss / n + lam / n * w.square().sum()
    gw.div_(n).add_(w, alpha=2 * lam / n)
    gb.div_(n)
    return loss, gw, gb


def feature_eig(x: torch.Tensor, chunk_rows: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues [D] and eigenvectors [D, D] (float64, on x's device) of the second-moment matrix x^T x / N,
    the preconditioner of ``fit_logistic``; one N x D^2 pass, computed once per feature matrix."""
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], chunk_rows):
        gram.addmm_(x[i : i + chunk_rows].T, x[i : i + chunk_rows])
    return torch.linalg.eigh(gram.double() / x.shape[0])


class _Objective:
    """The mean-scaled objective in the preconditioned parameters (W', b), W = W' M, scaled by 1 / tol for
    L-BFGS; remembers its last evaluation (L-BFGS re-evaluates its start point on every step call)."""

    def __init__(self, x, t, lam, rows, m, scale) -> None:
        self.x, self.t, self.lam, self.rows, self.m, self.scale = x, t, lam, rows, m, scale
        self.key: tuple[torch.Tensor, torch.Tensor] | None = None

    def weight(self, wp: torch.Tensor) -> torch.Tensor:
        return wp if self.m is None else wp @ self.m

    def __call__(self, wp: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """Set wp.grad and b.grad (scaled, preconditioned); (mean-scaled loss, max |true gradient|)."""
        if self.key is None or not (torch.equal(self.key[0], wp) and torch.equal(self.key[1], b)):
            loss, gw, gb = _loss_grad(self.x, self.t, self.weight(wp), b, self.lam, self.rows)
            self.loss, self.grad_max = loss.item(), max(gw.abs().max().item(), gb.abs().max().item())
            self.gwp = (gw if self.m is None else gw @ self.m.T).mul_(self.scale)
            self.gb = gb.mul_(self.scale)
            self.key = (wp.clone(), b.clone())
        wp.grad, b.grad = self.gwp.clone(), self.gb.clone()
        return self.loss, self.grad_max


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    C: float,
    *,
    init: LogisticModel | None = None,
    config: LogisticConfig | None = None,
    eig: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LogisticModel:
    """Fit ``sum CE + ||W||^2 / (2 C)`` on features x [N, D] (already standardised) and integer labels y [N].

    Runs on x's device in ``config.dtype``; ``init`` warm-starts from another fit (its weights for the
    classes both fits share); ``eig``: ``feature_eig(x)`` if already computed (any close estimate will do, it
    only preconditions). Raises DataError when fewer than two classes are present.

    L-BFGS runs on W' with W = W' M, M = diag(s) V^T, V the eigenvectors of x^T x / N (eigenvalues e) and
    s = (e / 4 + 1 / (C N))^-1/2, the inverse square root of a rough Hessian of the objective in that basis
    (softmax curvature <= 1/4 on the data part, 1 / (C N) from the penalty). Same objective and minimiser,
    but correlated or rank-deficient features (real backbones) no longer leave weakly-regularised fits
    stalled at max_iter. Stopping is checked on the gradient for W itself, as scikit-learn's.
    """
    config = config or LogisticConfig()
    if not C > 0:
        raise ConfigError(f"logistic probe: C must be positive, got {C}")
    dtype = _DTYPES[config.dtype]
    x = x.to(dtype=dtype)
    y = y.to(x.device).long()
    classes, t = torch.unique(y, sorted=True, return_inverse=True)
    n, k = x.shape[0], len(classes)
    if k < 2:
        raise DataError(f"logistic probe: the fit needs samples of at least 2 classes, got only {classes.tolist()}")
    c_eff = C / 2 if k == 2 else C  # binary: C' = C / 2 matches scikit-learn's binomial fit
    rows = config.chunk_rows or _auto_chunk(k)
    w = torch.zeros(k, x.shape[1], dtype=dtype, device=x.device)
    b = torch.zeros(k, dtype=dtype, device=x.device)
    if init is not None:
        src = init.classes.to(x.device)
        same = torch.isin(classes, src)
        if same.any() and init.weight.shape[1] == x.shape[1]:
            pos = torch.searchsorted(src, classes[same])
            w[same] = init.weight.to(x.device, dtype)[pos]
            b[same] = init.bias.to(x.device, dtype)[pos]
    with torch.no_grad(), _threads(x.device, n * x.shape[1] * k, config.cpu_threads):
        m = None
        if config.precondition:
            e, v = eig if eig is not None else feature_eig(x, rows)
            s = (_CURVATURE * e.to(x.device).clamp_min(0) + 1.0 / (c_eff * n)).rsqrt()
            m = (s[:, None] * v.to(x.device).T).to(dtype)  # W = W' M
            w = (w @ (v.to(x.device) / s).to(dtype)).contiguous()  # W' = W M^-1 = W V diag(1/s)
        # L-BFGS sees the objective divided by tol: torch's LBFGS drops curvature pairs with y.s <= 1e-10
        # (absolute), which near a tight optimum of the mean-scaled objective starves it into steepest descent.
        f = _Objective(x, t, 1.0 / (2.0 * c_eff), rows, m, 1.0 / config.tol)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=1,  # one iteration per call: the stopping test below is on the true gradient
            max_eval=26,  # the strong-Wolfe search's default 25 evaluations, plus the start point
            tolerance_grad=0.0,
            tolerance_change=64 * torch.finfo(dtype).eps,
            history_size=config.history_size,
            line_search_fn="strong_wolfe",
        )
        closure = lambda: f(w, b)[0] * f.scale  # noqa: E731
        loss, grad_max = f(w, b)
        n_iter = 0
        while grad_max > config.tol and n_iter < config.max_iter:
            opt.step(closure)
            n_iter += 1
            prev, (loss, grad_max) = loss, f(w, b)
            if (prev - loss) * f.scale <= 64 * torch.finfo(dtype).eps:  # no progress: the line search stalled
                break
        weight = f.weight(w)
    return LogisticModel(
        weight=weight,
        bias=b,
        classes=classes,
        C=C,
        n_iter=n_iter,
        grad_max=grad_max,
        loss=loss,
        converged=grad_max <= config.tol,
    )


# --- inputs ---------------------------------------------------------------------------------------------


def _as_tensor(a: torch.Tensor | np.ndarray) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def _check_split(name: str, x, y, num_classes: int, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D] finite floats and y [N] integer labels in 0..num_classes-1, N >= 1, or a DataError saying why."""
    if x is None or y is None:
        raise DataError(f"logistic probe: {name} features and labels must be given together")
    x, y = _as_tensor(x), _as_tensor(y)
    if x.ndim != 2:
        raise DataError(
            f"logistic probe: {name} features must be a 2-d [samples, dims] array, got shape {tuple(x.shape)}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"logistic probe: {name} has {len(x)} feature rows but labels of shape {tuple(y.shape)} (need [{len(x)}])"
        )
    if len(x) == 0:
        raise DataError(f"logistic probe: the {name} split is empty")
    if x.shape[1] == 0 or (dim is not None and x.shape[1] != dim):
        raise DataError(f"logistic probe: {name} features have {x.shape[1]} dims, expected {dim}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise DataError(f"logistic probe: {name} features must be numbers, got {x.dtype}")
    if x.is_floating_point():
        bad = sum(int((~torch.isfinite(x[i : i + 65536])).any(dim=1).sum()) for i in range(0, len(x), 65536))
        if bad:
            raise DataError(f"logistic probe: {bad} of {len(x)} {name} feature rows contain NaN or infinite values")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise DataError(f"logistic probe: {name} labels must be integers")
    elif y.dtype == torch.bool or not (y.dtype.is_signed or y.dtype == torch.uint8):
        raise DataError(f"logistic probe: {name} labels must be integers, got {y.dtype}")
    y = y.long()
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(
            f"logistic probe: {name} labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}"
        )
    return x, y


def _moments(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (unbiased) std in float64, two chunked passes (no float64 copy of x)."""
    n = x.shape[0]
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, n, rows):
        mean += x[i : i + rows].double().sum(0)
    mean /= n
    var = torch.zeros_like(mean)
    for i in range(0, n, rows):
        var += (x[i : i + rows].double() - mean).square().sum(0)
    var /= max(n - 1, 1)
    return mean, var.sqrt()


def _standardise(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype, device, order=None, rows: int = 65536
) -> torch.Tensor:
    """(x[order] - mean) / std as one new [N, D] tensor in dtype on device, built chunk by chunk."""
    n = x.shape[0] if order is None else len(order)
    out = torch.empty(n, x.shape[1], dtype=dtype, device=device)
    for i in range(0, n, rows):
        part = x[i : i + rows] if order is None else x[order[i : i + rows].to(x.device)]
        out[i : i + rows] = ((part.to(device, torch.float64) - mean) / std).to(dtype)
    return out


# --- the C search and the probe ---------------------------------------------------------------------------


def _search(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    metric: str,
    config: LogisticConfig,
) -> tuple[float, float, list[tuple[float, float]], LogisticModel, tuple[torch.Tensor, torch.Tensor] | None]:
    tried: dict[float, float] = {}
    models: dict[float, LogisticModel] = {}
    eig = feature_eig(train_x, config.chunk_rows or 65536) if config.precondition else None

    def score(log_c: float) -> float:
        log_c = round(log_c, 6)
        if log_c not in tried:
            near = min(models, key=lambda c: (abs(c - log_c), c), default=None)  # warm start: nearest C
            model = fit_logistic(train_x, train_y, 10.0**log_c, init=models.get(near), config=config, eig=eig)  # type: ignore[arg-type]
            models[log_c] = model
            scores = model.log_proba(val_x, num_classes, config.chunk_rows)
            tried[log_c] = classification_metrics(scores, val_y, metric)["score"]
        return tried[log_c]

    for c in sorted(config.grid):  # increasing C: each fit starts from the more regularised solution
        score(c)
    # Ties go to the smaller C (stronger regularisation).
    best = max(config.grid, key=lambda c: (score(c), -c))
    step = 1.0
    for _ in range(config.refine_steps):
        best = max((best - step, best, best + step), key=lambda c: (score(c), -c))
        step /= 2
    log = sorted((10.0**c, s) for c, s in tried.items())
    best = round(best, 6)
    return 10.0**best, tried[best], log, models[best], eig


def search_c(
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    val_x: torch.Tensor | np.ndarray,
    val_y: torch.Tensor | np.ndarray,
    *,
    num_classes: int,
    metric: str = "top1",
    config: LogisticConfig | None = None,
) -> tuple[float, float, list[tuple[float, float]]]:
    """(best C, its held-out score, every (C, score) tried) by coarse grid + halving refinement.

    The features are used as given (``logistic_probe`` standardises them first); the fits run on
    ``train_x``'s device. Cost: at most ``len(grid) + 2 * refine_steps`` warm-started fits (module docstring).
    """
    config = config or LogisticConfig()
    _check_args(num_classes, metric)
    tx, ty = _check_split("train", train_x, train_y, num_classes)
    vx, vy = _check_split("validation", val_x, val_y, num_classes, tx.shape[1])
    tx = tx.to(_DTYPES[config.dtype])  # once, not in every fit
    c, val_score, log, _, _ = _search(tx, ty, vx, vy, num_classes, metric, config)
    return c, val_score, log


def _check_args(num_classes: int, metric: str) -> None:
    if metric not in CLASSIFICATION_METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(CLASSIFICATION_METRICS)}")
    if num_classes < 2:
        raise ConfigError(f"logistic probe: need num_classes >= 2, got {num_classes}")


def logistic_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int,
    metric: str = "top1",
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    config: LogisticConfig | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], torch.Tensor]:
    """Fit the probe; returns (test metrics with ``C``, ``val_score``, ``num_train``, ``num_c_tried``,
    test scores [N, num_classes]: float64 class log-probabilities on the CPU, -inf for classes absent from
    the train labels).

    Features are standardised with the train split's mean and std. Without ``val_x`` a ``config.holdout``
    fraction of the train split (random, seeded) chooses C, then the probe is refit on the whole train split.
    Everything runs on ``train_x``'s device. Bad inputs (empty or mismatched splits, NaN features, labels
    out of range) raise DataError; a bad metric or class count ConfigError.
    """
    config = config or LogisticConfig()
    _check_args(num_classes, metric)
    train_x, train_y = _check_split("train", train_x, train_y, num_classes)
    dim = train_x.shape[1]
    test_x, test_y = _check_split("test", test_x, test_y, num_classes, dim)
    if (val_x is None) != (val_y is None):
        raise DataError("logistic probe: validation features and labels must be given together")
    if val_x is not None:
        val_x, val_y = _check_split("validation", val_x, val_y, num_classes, dim)
    elif len(train_y) < 2:
        raise DataError("logistic probe: need at least 2 train samples to hold some out for choosing C")
    device, dtype = train_x.device, _DTYPES[config.dtype]
    rows = config.chunk_rows or 65536
    # Standardise with the train statistics: L-BFGS converges far faster, and C is searched anyway.
    mean, std = _moments(train_x, rows)
    std = std.clamp_min(1e-6)
    n = len(train_y)
    if val_x is None:
        fit_idx, hold_idx = split_indices(n, config.holdout, seed)
        order = torch.as_tensor(np.concatenate([fit_idx, hold_idx]), device=device)
        # One standardised copy, the fit part first: the fit and held-out splits are views of it, and the
        # final refit uses all of it (the sample order does not change the objective).
        tx = _standardise(train_x, mean, std, dtype, device, order, rows)
        ty = train_y.to(device)[order]
        sx, sy, vx, vy = tx[: len(fit_idx)], ty[: len(fit_idx)], tx[len(fit_idx) :], ty[len(fit_idx) :]
    else:
        tx, ty = _standardise(train_x, mean, std, dtype, device, rows=rows), train_y.to(device)
        sx, sy = tx, ty
        vx, vy = _standardise(val_x, mean, std, dtype, device, rows=rows), val_y.to(device)  # type: ignore[union-attr]
    c, val_score, log, model, eig = _search(sx, sy, vx, vy, num_classes, metric, config)
    if val_x is None:  # refit on the whole train split, from the chosen C's solution (and preconditioner)
        model = fit_logistic(tx, ty, c, init=model, config=config, eig=eig)
    scores = torch.cat(
        [
            model.log_proba(
                _standardise(test_x[i : i + rows], mean, std, dtype, device), num_classes, config.chunk_rows
            )
            for i in range(0, len(test_x), rows)
        ]
    ).cpu()
    out = classification_metrics(scores, test_y, metric)
    out.update({"C": c, "val_score": val_score, "num_train": float(n), "num_c_tried": float(len(log))})
    return out, scores
