"""GlobalBatchNorm1d on 2 gloo processes equals nn.BatchNorm1d on the whole batch in one process."""

import pytest
import torch
from dist_utils import run_distributed
from torch import nn

from openslip.distributed_batchnorm import GlobalBatchNorm1d, convert_global_batchnorm


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64) * 3 + 1
    upstream = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return x, upstream


def _reference():
    x, up = _data()
    x.requires_grad_()
    bn = nn.BatchNorm1d(5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 5))
        bn.bias.copy_(torch.linspace(-1, 1, 5))
    y = bn(x)
    (y * up).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def _rank_body(info):
    x, up = _data()
    lo = info.rank * 4
    x = x[lo : lo + 4].clone().requires_grad_()
    bn = GlobalBatchNorm1d(5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 5))
        bn.bias.copy_(torch.linspace(-1, 1, 5))
    y = bn(x)
    (y * up[lo : lo + 4]).sum().backward()
    return {
        "y": y.detach(),
        "gx": x.grad,
        "gw": bn.weight.grad,
        "gb": bn.bias.grad,
        "rm": bn.running_mean,
        "rv": bn.running_var,
    }


@pytest.mark.multiprocess
def test_global_batchnorm_matches_one_process():
    y, gx, gw, gb, rm, rv = _reference()
    results = run_distributed(_rank_body, 2)
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), y, rtol=1e-10, atol=1e-10)
    # Sum-of-local-losses convention: local input gradients equal the one-process ones; parameter
    # gradients summed over ranks equal the one-process ones (DDP averages a loss that is W x larger).
    torch.testing.assert_close(torch.cat([r["gx"] for r in results]), gx, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(results[0]["gw"] + results[1]["gw"], gw, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(results[0]["gb"] + results[1]["gb"], gb, rtol=1e-9, atol=1e-10)
    for r in results:
        torch.testing.assert_close(r["rm"], rm)
        torch.testing.assert_close(r["rv"], rv)


def test_single_process_is_plain_batchnorm_and_conversion_keeps_state():
    head = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
    head[1].running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    convert_global_batchnorm(head)
    assert type(head[1]) is GlobalBatchNorm1d
    assert set(head.state_dict()) == set(before)
    torch.testing.assert_close(head.state_dict()["1.running_mean"], before["1.running_mean"])
    x = torch.randn(5, 4)
    ref = nn.BatchNorm1d(6)
    ref.load_state_dict(head[1].state_dict())
    torch.testing.assert_close(head[1](head[0](x)), ref(head[0](x)))
