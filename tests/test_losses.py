"""clip_loss, sigmoid_loss, simclr_loss and SLIPLoss on one process against per-sample loops written from the
definitions."""

from __future__ import annotations

import math

import pytest
import torch

from openslip.losses import SLIPLoss, clip_loss, sigmoid_loss, simclr_loss

N, D = 6, 5


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum())


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def naive_clip(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean over samples of (-log p(text_i | image_i) - log p(image_i | text_i)) / 2, softmax over all N."""
    n = img.shape[0]
    u = [_unit(img[i]) for i in range(n)]
    v = [_unit(txt[i]) for i in range(n)]
    total = img.new_zeros(())
    correct = 0
    for i in range(n):
        i2t = [torch.exp(scale * _dot(u[i], v[j])) for j in range(n)]
        t2i = [torch.exp(scale * _dot(v[i], u[j])) for j in range(n)]
        total = total - torch.log(i2t[i] / sum(i2t)) - torch.log(t2i[i] / sum(t2i))
        correct += int(max(range(n), key=lambda j: float(i2t[j].detach())) == i)
    return total / (2 * n), 100.0 * correct / n


def naive_sigmoid(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """SigLIP: -(1/N) sum over every (i, j) of log sigmoid(z_ij * (t <u_i, v_j> + b)), z = +1 iff i == j."""
    n = img.shape[0]
    u = [_unit(img[i]) for i in range(n)]
    v = [_unit(txt[i]) for i in range(n)]
    total = img.new_zeros(())
    correct = 0
    for i in range(n):
        logits = [scale * _dot(u[i], v[j]) + bias for j in range(n)]
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(1 / (1 + torch.exp(-z * logits[j])))
        correct += int(max(range(n), key=lambda j: float(logits[j].detach())) == i)
    return total / n, 100.0 * correct / n


def naive_simclr(z1: torch.Tensor, z2: torch.Tensor, t: float) -> tuple[torch.Tensor, float]:
    """NT-Xent: anchor a_i, positive b_i, candidates every b_j and every a_j with j != i (2N - 1)."""
    n = z1.shape[0]
    a = [_unit(z1[i]) for i in range(n)]
    b = [_unit(z2[i]) for i in range(n)]
    total = z1.new_zeros(())
    correct = 0
    for anchors, others in ((a, b), (b, a)):
        for i in range(n):
            cands = [(j, torch.exp(_dot(anchors[i], others[j]) / t)) for j in range(n)]
            cands += [(n + j, torch.exp(_dot(anchors[i], anchors[j]) / t)) for j in range(n) if j != i]
            den = sum(e for _, e in cands)
            total = total - torch.log(cands[i][1] / den)
            if anchors is a:
                correct += int(max(cands, key=lambda c: float(c[1].detach()))[0] == i)
    return total / (2 * n), 100.0 * correct / n


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, D, generator=g, dtype=dtype).requires_grad_() for _ in range(2)]


def _grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, leaves)


def test_clip_loss_matches_per_sample_loop_value_and_gradient():
    img, txt = _inputs(0)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64, requires_grad=True)
    out = clip_loss(img, txt, scale)
    ref, ref_acc = naive_clip(img, txt, scale)
    assert out["clip_loss"].dtype == torch.float64
    torch.testing.assert_close(out["clip_loss"], ref, rtol=1e-10, atol=1e-12)
    assert out["clip_acc"].item() == pytest.approx(ref_acc)
    assert not out["clip_acc"].requires_grad
    for got, want in zip(_grads(out["clip_loss"], [img, txt, scale]), _grads(ref, [img, txt, scale]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias", [-10.0, -1.0, 2.0])
def test_sigmoid_loss_matches_double_loop_value_and_gradient(bias):
    img, txt = _inputs(3)
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)  # SigLIP's initial t
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    out = sigmoid_loss(img, txt, scale, b)
    ref, ref_acc = naive_sigmoid(img, txt, scale, b)
    assert out["clip_loss"].dtype == torch.float64
    torch.testing.assert_close(out["clip_loss"], ref, rtol=1e-10, atol=1e-12)
    assert out["clip_acc"].item() == pytest.approx(ref_acc)
    assert not out["clip_acc"].requires_grad
    leaves = [img, txt, scale, b]
    for got, want in zip(_grads(out["clip_loss"], leaves), _grads(ref, leaves), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_sigmoid_loss_in_slip_loss_needs_the_bias():
    out = _model_out()
    out["logit_bias"] = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    res = SLIPLoss(contrastive="sigmoid")(out)
    assert set(res) == {"loss", "clip_loss", "clip_acc", "ssl_loss", "ssl_acc"}  # the image-text term's keys stay
    want = sigmoid_loss(out["image_embed"], out["text_embed"], out["logit_scale"], out["logit_bias"])["clip_loss"]
    torch.testing.assert_close(res["clip_loss"], want.detach())
    res["loss"].backward()
    assert out["logit_bias"].grad is not None
    with pytest.raises(ValueError, match="clip_scale=1.0 but the model output has no logit_bias"):
        SLIPLoss(contrastive="sigmoid")({k: v for k, v in out.items() if k != "logit_bias"})
    with pytest.raises(ValueError, match="contrastive must be one of"):
        SLIPLoss(contrastive="hinge")
    with pytest.raises(ValueError, match="gathers with gradient only"):
        SLIPLoss(contrastive="sigmoid", gather="reference")
    assert "contrastive='sigmoid'" in repr(SLIPLoss(contrastive="sigmoid"))


def test_clip_loss_accepts_python_float_scale_and_is_symmetric():
    img, txt = _inputs(1)
    a = clip_loss(img, txt, 3.0)["clip_loss"]
    b = clip_loss(txt, img, torch.tensor(3.0))["clip_loss"]
    torch.testing.assert_close(a, b)


def test_clip_loss_perfect_alignment_has_full_accuracy():
    emb = torch.eye(N, D + N)[:, : D + N] * 4.0
    out = clip_loss(emb, emb * 0.5, 100.0)
    assert out["clip_acc"].item() == pytest.approx(100.0)
    assert out["clip_loss"].item() < 1e-6


def test_simclr_loss_matches_per_sample_loop_value_and_gradient():
    z1, z2 = _inputs(2)
    out = simclr_loss(z1, z2, temperature=0.1)
    ref, ref_acc = naive_simclr(z1, z2, 0.1)
    torch.testing.assert_close(out["ssl_loss"], ref, rtol=1e-10, atol=1e-12)
    assert out["ssl_acc"].item() == pytest.approx(ref_acc)
    for got, want in zip(_grads(out["ssl_loss"], [z1, z2]), _grads(ref, [z1, z2]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_simclr_loss_other_temperature_and_uniform_limit():
    z1, z2 = _inputs(3)
    out = simclr_loss(z1, z2, temperature=0.5)
    ref, _ = naive_simclr(z1, z2, 0.5)
    torch.testing.assert_close(out["ssl_loss"], ref, rtol=1e-10, atol=1e-12)
    # identical embeddings everywhere: every one of the 2N - 1 candidates is equally likely
    same = torch.ones(N, D, dtype=torch.float64)
    torch.testing.assert_close(
        simclr_loss(same, same)["ssl_loss"], torch.tensor(math.log(2 * N - 1), dtype=torch.float64)
    )


def test_gather_modes_agree_on_one_process():
    img, txt = _inputs(4)
    for mode in ("grad", "reference"):
        out = clip_loss(img, txt, 5.0, gather=mode)
        grads = _grads(out["clip_loss"], [img, txt])
        if mode == "grad":
            first = (out["clip_loss"].detach(), grads)
        else:
            torch.testing.assert_close(out["clip_loss"], first[0])
            for got, want in zip(grads, first[1], strict=True):
                torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="gather"):
        clip_loss(img, txt, 5.0, gather="nograd")  # type: ignore[arg-type]


def test_bad_shapes_raise():
    img, txt = _inputs(5)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(img, txt[:-1], 1.0)
    with pytest.raises(ValueError, match="same shape"):
        simclr_loss(img[0], txt[0])
    with pytest.raises(ValueError, match="temperature"):
        simclr_loss(img, txt, temperature=0.0)


def _model_out(seed: int = 6, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(N, D, generator=g, dtype=dtype) for k in ("image_embed", "text_embed")}
    out.update({k: torch.randn(N, 4, generator=g, dtype=dtype) for k in ("view1_embed", "view2_embed")})
    out["logit_scale"] = torch.tensor(1 / 0.07, dtype=dtype)
    for v in out.values():
        v.requires_grad_()
    return out


def test_slip_loss_combines_terms():
    out = _model_out()
    c = clip_loss(out["image_embed"], out["text_embed"], out["logit_scale"])
    s = simclr_loss(out["view1_embed"], out["view2_embed"], temperature=0.2)
    res = SLIPLoss(ssl_scale=0.5, ssl_temperature=0.2)(out)
    assert set(res) == {"loss", "clip_loss", "clip_acc", "ssl_loss", "ssl_acc"}
    torch.testing.assert_close(res["loss"], c["clip_loss"] + 0.5 * s["ssl_loss"])
    torch.testing.assert_close(res["clip_loss"], c["clip_loss"].detach())
    torch.testing.assert_close(res["ssl_acc"], s["ssl_acc"])
    assert res["loss"].requires_grad
    assert not any(res[k].requires_grad for k in res if k != "loss")
    res = SLIPLoss(ssl_scale=2.0, clip_scale=3.0)(out)
    torch.testing.assert_close(
        res["loss"], 3.0 * c["clip_loss"] + 2.0 * simclr_loss(out["view1_embed"], out["view2_embed"])["ssl_loss"]
    )


def test_slip_loss_skips_zero_weights_and_refuses_missing_inputs():
    out = _model_out()
    clip_only = {k: out[k] for k in ("image_embed", "text_embed", "logit_scale")}
    ssl_only = {k: out[k] for k in ("view1_embed", "view2_embed")}
    for loss_fn, inputs, keys in [
        (SLIPLoss(ssl_scale=0.0), clip_only, {"loss", "clip_loss", "clip_acc"}),
        (SLIPLoss(ssl_scale=0.0), out, {"loss", "clip_loss", "clip_acc"}),
        (SLIPLoss(clip_scale=0.0), ssl_only, {"loss", "ssl_loss", "ssl_acc"}),
        (SLIPLoss(clip_scale=0.0), out, {"loss", "ssl_loss", "ssl_acc"}),
    ]:
        res = loss_fn(inputs)
        assert set(res) == keys
        term = "clip_loss" if "clip_loss" in keys else "ssl_loss"
        torch.testing.assert_close(res["loss"].detach(), res[term])
    # a weighted term without its inputs is an error, not a silently smaller objective
    for loss_fn, inputs, missing in [
        (SLIPLoss(), clip_only, "ssl_scale=1.0 but the model output has no view1_embed, view2_embed"),
        (SLIPLoss(), ssl_only, "clip_scale=1.0 but the model output has no image_embed, text_embed, logit_scale"),
        (SLIPLoss(), {**out, "view2_embed": None}, "has no view2_embed"),
    ]:
        with pytest.raises(ValueError, match=missing):
            loss_fn(inputs)
    # a zero-weight term must not even be computed: its gradient stays None
    res = SLIPLoss(ssl_scale=0.0)(out)
    res["loss"].backward()
    assert out["view1_embed"].grad is None and out["image_embed"].grad is not None


def test_slip_loss_errors():
    out = _model_out()
    with pytest.raises(ValueError, match="has no text_embed, logit_scale"):
        SLIPLoss()({"image_embed": out["image_embed"]})
    with pytest.raises(ValueError, match="no term"):
        SLIPLoss(clip_scale=0.0, ssl_scale=0.0)(out)
    with pytest.raises(ValueError, match=">= 0"):
        SLIPLoss(ssl_scale=-1.0)
    with pytest.raises(ValueError, match="gather"):
        SLIPLoss(gather="all")  # type: ignore[arg-type]
    assert "ssl_scale=1.0" in repr(SLIPLoss())


def test_bf16_inputs_under_autocast_are_computed_in_float32():
    out64 = _model_out(7)
    out16 = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in out64.items()}
    out32 = {k: v.detach().float() for k, v in out16.items()}
    expected = SLIPLoss()(out32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = SLIPLoss()(out16)
        got32 = SLIPLoss()(out32)  # float32 inputs: autocast must not push the matmuls to bf16
    for k in expected:
        assert got[k].dtype == torch.float32, k
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got32[k], expected[k], rtol=1e-6, atol=1e-6)
    got["loss"].backward()
    assert out16["image_embed"].grad.dtype == torch.bfloat16


def test_effective_rank_reads_collapse() -> None:
    from openslip.losses import effective_rank

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(256, 16, generator=g, dtype=torch.float64)
    collapsed = torch.randn(256, 1, generator=g, dtype=torch.float64) * torch.randn(
        1, 16, generator=g, dtype=torch.float64
    )
    assert 12 < effective_rank(spread).item() <= 16
    assert effective_rank(collapsed).item() < 1.01
    # against the definition written out: exp of the entropy of the normalised singular values
    s = torch.linalg.svdvals(spread)
    p = s / s.sum()
    assert effective_rank(spread).item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-5)


def test_training_logs_the_ssl_rank(tmp_path) -> None:
    import json

    from openslip.cli import main

    argv = ["train", "model=slip_vit_micro", "train.steps=2", "train.batch_size=8", "data.num_workers=0",
            "data.image_size=32", "eval.sets=[]", "train.log_every=1", f"out_dir={tmp_path}"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(1.0 <= r["ssl_rank"] <= 8.0 for r in rows if "loss" in r)


def test_the_ssl_rank_is_computed_only_at_the_steps_that_log(tmp_path, monkeypatch) -> None:
    """RankMe's SVD costs milliseconds on a GPU and waits for the device: only the steps whose metrics are written
    (every train.log_every and the last) compute it, and each of them logs it."""
    import json

    import openslip.losses as losses
    from openslip.cli import main

    ranks: list[int] = []
    real = losses.effective_rank
    monkeypatch.setattr(losses, "effective_rank", lambda z: ranks.append(1) or real(z))
    argv = ["train", "model=slip_vit_micro", "train.steps=5", "train.batch_size=8", "data.num_workers=0",
            "data.image_size=32", "eval.sets=[]", "train.log_every=2", f"out_dir={tmp_path}"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 5] and all(1.0 <= r["ssl_rank"] <= 8.0 for r in logged)
    assert len(ranks) == 3
