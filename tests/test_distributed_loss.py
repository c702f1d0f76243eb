"""The distributed helpers, and the losses on 2 gloo processes against one process holding the whole batch.

Convention under test (openslip.distributed): rank r's loss L_r is the mean over its local rows, the
one-process loss is L = mean_r L_r, and the gradient reaching rank r's local features is W * dL/dx_r,
so that DDP's averaging over ranks gives every shared parameter exactly dL/dtheta.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_distributed

from openslip import distributed
from openslip.losses import clip_loss, sigmoid_loss, simclr_loss

WORLD, B, D_IN, D = 2, 3, 4, 5
N = WORLD * B
TAU = 0.1


def _global_data() -> dict[str, torch.Tensor]:
    """The whole float64 batch; every rank builds the same one and keeps its slice."""
    g = torch.Generator().manual_seed(1234)
    data = {k: torch.randn(N, D_IN, generator=g, dtype=torch.float64) for k in ("x_img", "x_v1")}
    data.update({k: torch.randn(N, D, generator=g, dtype=torch.float64) for k in ("txt", "v2")})
    # shared "parameters", identical on every rank as DDP keeps them
    data["P"] = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    data["Q"] = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    data["log_scale"] = torch.tensor(2.0, dtype=torch.float64)
    # the sigmoid loss's bias: not SigLIP's -10, at which a 6-pair batch's negatives would give almost no gradient
    data["bias"] = torch.tensor(-1.5, dtype=torch.float64)
    return data


def _leaves(data: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {
        "x_img": data["x_img"][rows],
        "x_v1": data["x_v1"][rows],
        "txt": data["txt"][rows].clone().requires_grad_(),
        "v2": data["v2"][rows].clone().requires_grad_(),
        "P": data["P"].clone().requires_grad_(),
        "Q": data["Q"].clone().requires_grad_(),
        "log_scale": data["log_scale"].clone().requires_grad_(),
        "bias": data["bias"].clone().requires_grad_(),
    }


def _run_case(lv: dict[str, torch.Tensor], kind: str, gather: str) -> dict[str, torch.Tensor]:
    """Loss of the local rows with image embeddings = x_img @ P (P shared) and z1 = x_v1 @ Q; its grads."""
    if kind == "clip":
        out = clip_loss(lv["x_img"] @ lv["P"], lv["txt"], lv["log_scale"].exp(), gather=gather)
        loss, acc, names = out["clip_loss"], out["clip_acc"], ("P", "txt", "log_scale")
    elif kind == "sigmoid":
        out = sigmoid_loss(lv["x_img"] @ lv["P"], lv["txt"], lv["log_scale"].exp(), lv["bias"])
        loss, acc, names = out["clip_loss"], out["clip_acc"], ("P", "txt", "log_scale", "bias")
    else:
        out = simclr_loss(lv["x_v1"] @ lv["Q"], lv["v2"], temperature=TAU, gather=gather)
        loss, acc, names = out["ssl_loss"], out["ssl_acc"], ("Q", "v2")
    grads = torch.autograd.grad(loss, [lv[n] for n in names])
    return {"loss": loss.detach(), "acc": acc, **{f"grad_{n}": g for n, g in zip(names, grads, strict=True)}}


CASES = [("clip", "grad"), ("clip", "reference"), ("simclr", "grad"), ("simclr", "reference"), ("sigmoid", "grad")]


def _body(info: distributed.DistInfo) -> dict:
    res: dict = {"info": [info.rank, info.world_size, info.local_rank, int(info.is_main), str(info.device)]}
    res["queries"] = [distributed.rank(), distributed.world_size(), int(distributed.is_main())]
    res["obj"] = distributed.broadcast_object({"from": info.rank, "tag": "x"} if info.rank == 0 else None)
    res["mean"] = distributed.all_reduce_mean(torch.tensor([float(info.rank), 10.0]))
    # raw gather: rank-major order, and the backward sums over ranks before slicing
    x = torch.full((2, 3), float(info.rank + 1), requires_grad=True)
    gathered = distributed.gather_with_grad(x)
    weights = torch.arange(gathered.numel(), dtype=gathered.dtype).view_as(gathered) * (info.rank + 1)
    (gathered * weights).sum().backward()
    res["gathered"], res["gather_grad"] = gathered.detach(), x.grad
    res["no_grad_requires_grad"] = int(distributed.gather_no_grad(x).requires_grad)
    try:
        distributed.gather_with_grad(torch.zeros(info.rank + 1, 2), check_sizes=True)
        res["size_error"] = ""
    except ValueError as err:
        res["size_error"] = str(err)

    data = _global_data()
    lv = _leaves(data, slice(info.rank * B, (info.rank + 1) * B))
    for kind, gather in CASES:
        out = _run_case(lv, kind, gather)
        out["loss_mean"] = distributed.all_reduce_mean(out["loss"])
        res[f"{kind}/{gather}"] = out
    return res


# ---- one-process references, written with explicit cross-entropies over the concatenated batch ----


def _rowwise_clip(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, detach_cols: bool) -> torch.Tensor:
    """Per-sample (CE_i2t + CE_t2i) / 2 over all N; detach_cols rebuilds the reference's no-grad gather:
    the columns a rank sees are copies without gradient, only its own rows carry gradient."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    img_c, txt_c = (img.detach(), txt.detach()) if detach_cols else (img, txt)
    labels = torch.arange(img.shape[0])
    ce_i2t = F.cross_entropy(scale * img @ txt_c.t(), labels, reduction="none")
    ce_t2i = F.cross_entropy(scale * txt @ img_c.t(), labels, reduction="none")
    return (ce_i2t + ce_t2i) / 2


def _rowwise_sigmoid(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per image row i: -sum_j log sigmoid(z_ij * (scale * <img_i, txt_j> + bias)), z = +1 at j = i, else -1."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    signs = 2 * torch.eye(img.shape[0], dtype=img.dtype) - 1
    return -F.logsigmoid(signs * (scale * img @ txt.t() + bias)).sum(dim=1)


def _rowwise_simclr(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    eye = torch.eye(a.shape[0], dtype=torch.bool)
    labels = torch.arange(a.shape[0])
    la = torch.cat([a @ b.t(), (a @ a.t()).masked_fill(eye, float("-inf"))], dim=1) / TAU
    lb = torch.cat([b @ a.t(), (b @ b.t()).masked_fill(eye, float("-inf"))], dim=1) / TAU
    return (F.cross_entropy(la, labels, reduction="none") + F.cross_entropy(lb, labels, reduction="none")) / 2


def _one_process(kind: str, detach_cols: bool) -> dict[str, torch.Tensor]:
    """Per-chunk losses and the gradient DDP would apply / each rank would hold, from one process.

    The objective differentiated is sum_r L_r / W = L (the one-process loss on the whole batch); with
    detach_cols, each L_r only sees gradient through its own rows (the 2021 reference).
    """
    lv = _leaves(_global_data(), slice(None))
    if kind == "clip":
        rows = _rowwise_clip(lv["x_img"] @ lv["P"], lv["txt"], lv["log_scale"].exp(), detach_cols)
        names = ("P", "txt", "log_scale")
    elif kind == "sigmoid":  # L_r = mean of rank r's rows = (1 / B) sum over its N * B pairs, so L = (1 / N) sum_ij
        rows = _rowwise_sigmoid(lv["x_img"] @ lv["P"], lv["txt"], lv["log_scale"].exp(), lv["bias"])
        names = ("P", "txt", "log_scale", "bias")
    else:
        rows = _rowwise_simclr(lv["x_v1"] @ lv["Q"], lv["v2"])
        names = ("Q", "v2")
    chunk_losses = rows.view(WORLD, B).mean(dim=1)  # L_r
    total = chunk_losses.mean()  # L = mean_r L_r
    grads = torch.autograd.grad(total, [lv[n] for n in names])
    return {
        "chunks": chunk_losses.detach(),
        "total": total.detach(),
        **{n: g for n, g in zip(names, grads, strict=True)},
    }


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_distributed(_body, WORLD)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.multiprocess
def test_helpers_on_two_ranks(results):
    for r, res in enumerate(results):
        assert res["info"] == [r, WORLD, r, int(r == 0), "cpu"]
        assert res["queries"] == [r, WORLD, int(r == 0)]
        assert res["obj"] == {"from": 0, "tag": "x"}
        close(res["mean"], torch.tensor([0.5, 10.0]))
        close(res["gathered"], torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
        # d/dx_r of sum_s <gathered, w_s> with w_s = arange * (s + 1): sum over ranks = 3 * arange, slice r
        close(res["gather_grad"], 3.0 * torch.arange(12.0).view(4, 3)[2 * r : 2 * r + 2])
        assert res["no_grad_requires_grad"] == 0
        assert "same batch size" in res["size_error"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["clip", "simclr", "sigmoid"])
def test_gather_with_grad_equals_one_process_on_the_whole_batch(results, kind):
    ref = _one_process(kind, detach_cols=False)
    per_rank = [res[f"{kind}/grad"] for res in results]
    shared, local = ("Q", "v2") if kind == "simclr" else ("P", "txt")
    for r, out in enumerate(per_rank):
        close(out["loss"], ref["chunks"][r])  # rank r: mean over its own rows, against the global batch
        close(out["loss_mean"], ref["total"])  # mean over ranks = one-process loss
        # gradient at rank r's local features = W x one-process gradient of those rows ...
        close(out[f"grad_{local}"] / WORLD, ref[local][r * B : (r + 1) * B])
    # ... so DDP's average over ranks gives shared parameters the one-process gradient
    close(torch.stack([o[f"grad_{shared}"] for o in per_rank]).mean(0), ref[shared])
    if kind != "simclr":
        close(torch.stack([o["grad_log_scale"] for o in per_rank]).mean(0), ref["log_scale"])
    if kind == "sigmoid":
        close(torch.stack([o["grad_bias"] for o in per_rank]).mean(0), ref["bias"])


@pytest.mark.multiprocess
def test_reference_gather_reproduces_the_2021_clip_gradient(results):
    ref = _one_process("clip", detach_cols=True)
    exact = _one_process("clip", detach_cols=False)
    per_rank = [res["clip/reference"] for res in results]
    for r, out in enumerate(per_rank):
        close(out["loss"], ref["chunks"][r])  # same forward value as gather="grad"
        close(out["loss"], results[r]["clip/grad"]["loss"])
        rows = slice(r * B, (r + 1) * B)
        # rank r holds dL_r/dx_r through its own rows only; the reconstruction differentiates mean_r L_r
        close(out["grad_txt"] / WORLD, ref["txt"][rows])
        assert (out["grad_txt"] / WORLD - exact["txt"][rows]).abs().max() > 1e-3
    ddp_p = torch.stack([o["grad_P"] for o in per_rank]).mean(0)
    close(ddp_p, ref["P"])
    assert (ddp_p - exact["P"]).abs().max() > 1e-3  # docs/DESIGN.md, 'Gathering with gradient'
    close(torch.stack([o["grad_log_scale"] for o in per_rank]).mean(0), ref["log_scale"])


@pytest.mark.multiprocess
def test_simclr_reference_mode_is_the_gradient_gather(results):
    # the 2021 SIMCLRLoss already gathered with gradient: both modes are identical
    for res in results:
        for key, value in res["simclr/grad"].items():
            close(res["simclr/reference"][key], value)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.gather_no_grad(x) is x  # the reference returned its input, gradient included
    assert distributed.all_reduce_mean(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    distributed.destroy_distributed()


def test_init_distributed_rejects_incomplete_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK"):
        distributed.init_distributed()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="not an integer"):
        distributed.init_distributed()
