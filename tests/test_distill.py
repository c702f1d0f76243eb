"""Self-distillation (`loss.ssl=distill`, docs/OBJECTIVES.md): the loss against a float64 loop, the EMA teacher and
its centre, 2 gloo processes against one holding the whole batch, resume with the teacher, collapse lines, bad
settings. Training, accumulation and weight resume of the distillation objectives also run in test_objectives.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_distributed
from train_utils import overrides, rewind

from openslip import distributed
from openslip.cli import main
from openslip.distill import center_update, distill_loss, ema_update_, teacher_momentum, teacher_probs
from openslip.losses import SLIPLoss
from openslip.models import SLIP, model_config, with_distill_head
from openslip.train.accumulate import accumulated_backward
from openslip.train.config import LossConfig
from openslip.train.teacher import EMATeacher, collapse_warnings
from openslip.weights import checkpoint as ckpt

DISTILL = ["model=slip_vit_micro", "loss.ssl=distill", "loss.local_crops=2"]
B, N, LOCAL = 8, 2, 16  # global batch, local crops, their side (micro model: 32 px views, patch 8)


def _distill_model(seed: int = 0) -> SLIP:
    torch.manual_seed(seed)
    return SLIP(with_distill_head(model_config("slip_vit_micro"))).double()


def _inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 1000, (B, 77), generator=g)
    text[:, 0] = 49406
    text[:, 9] = 49407
    text[:, 10:] = 0
    views = {k: torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64) for k in ("image", "view1", "view2")}
    return {**views, "local": torch.randn(B, N, 3, LOCAL, LOCAL, generator=g, dtype=torch.float64), "text": text}


def test_distill_loss_matches_a_float64_loop():
    """Value and gradient against -sum_k P_t(g)_k log softmax(s_v / tau)_k summed over the pairs (g, v != g)."""
    g = torch.Generator().manual_seed(0)
    k = 11
    student_global = torch.randn(B, 2, k, generator=g, dtype=torch.float64, requires_grad=True)
    student_local = torch.randn(B, N, k, generator=g, dtype=torch.float64, requires_grad=True)
    center = torch.randn(k, generator=g, dtype=torch.float64)
    probs = teacher_probs(torch.randn(B, 2, k, generator=g, dtype=torch.float64), center, 0.04)
    out = distill_loss(student_global, student_local, probs, temperature=0.1)
    crops = torch.cat([student_global, student_local], dim=1)
    total, pairs = torch.zeros((), dtype=torch.float64), 0
    for b in range(B):
        for t in range(2):
            for v in range(2 + N):
                if v == t:
                    continue
                logp = crops[b, v] / 0.1 - torch.logsumexp(crops[b, v] / 0.1, dim=0)
                total = total - (probs[b, t] * logp).sum()
                pairs += 1 if b == 0 else 0
    naive = total / (B * pairs)
    assert pairs == 2 * (2 + N) - 2
    assert abs(out["ssl_loss"].item() - naive.item()) < 1e-13
    grads = torch.autograd.grad(out["ssl_loss"], [student_global, student_local])
    naive_grads = torch.autograd.grad(naive, [student_global, student_local])
    for a, b in zip(grads, naive_grads, strict=True):  # 5e-16 measured, in gradients of about 0.2
        assert (a - b).abs().max().item() < 1e-14
    # the collapse metrics: mean entropy of a teacher distribution, entropy of their mean
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert out["teacher_entropy"].item() == pytest.approx(entropy.item(), abs=1e-12)


def test_teacher_probabilities_are_centred_and_sharpened():
    logits = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    center = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    expected = F.softmax((logits - center) / 0.04, dim=-1)
    assert torch.equal(teacher_probs(logits, center, 0.04), expected)


def test_teacher_momentum_rises_to_one_on_a_cosine():
    assert teacher_momentum(0, 100, 0.996) == 0.996
    assert teacher_momentum(100, 100, 0.996) == 1.0
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998, abs=1e-15)
    values = [teacher_momentum(s, 100, 0.996) for s in range(101)]
    assert values == sorted(values)


def test_ema_update_is_the_formula_and_the_teacher_gets_no_gradient():
    student = _distill_model()
    teacher = EMATeacher(student, LossConfig(ssl="distill"), total_steps=10)
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():  # the student moves (as after an optimizer step)
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = student(**{k: v for k, v in _inputs().items()}) | teacher.targets(_inputs())
    SLIPLoss.for_model(student)(out)["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())  # the targets carry no graph back to the teacher
    m = teacher.update(student, step=3)
    assert m == teacher_momentum(3, 10, 0.996)
    worst = 0.0
    ours = dict(teacher.visual.named_parameters(prefix="visual")) | dict(
        teacher.distill_head.named_parameters(prefix="distill_head")
    )
    theirs = dict(student.named_parameters())
    for name, value in ours.items():
        expected = m * before[name] + (1 - m) * theirs[name].detach()
        worst = max(worst, (value - expected).abs().max().item())
    assert worst <= 1e-15, worst  # float64: the formula to the last bit or one rounding of it


def test_ema_update_matches_a_naive_loop_in_float64():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    student = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    m = 0.99
    expected = [m * t + (1 - m) * s for t, s in zip(teacher, student, strict=True)]
    ema_update_(teacher, student, m)
    eps = torch.finfo(torch.float64).eps
    for a, b in zip(teacher, expected, strict=True):  # at most one rounding apart (a fused multiply-add, or not)
        assert ((a - b).abs() <= eps * b.abs().clamp_min(1.0)).all()


def test_accumulation_with_the_teacher_is_exact():
    """4 micro-batches of 2 give the loss and gradients of the batch of 8 (the targets are the whole batch's)."""
    model = _distill_model()
    teacher = EMATeacher(model, LossConfig(ssl="distill"), total_steps=10)
    inputs = _inputs()
    targets = teacher.targets(inputs)
    loss_fn = SLIPLoss.for_model(model)

    def with_targets(out):
        return loss_fn({**out, **targets})

    full = with_targets(model(**inputs))
    full["loss"].backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    accum = accumulated_backward(model, inputs, with_targets, 4)
    assert abs(accum["loss"].item() - full["loss"].item()) < 1e-12
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-9, atol=1e-12, msg=f"gradient of {n}")


def _step(rows: slice) -> dict:
    """One SLIP-with-distillation forward and backward on the rows `rows` of the global batch, then the teacher
    update; gradients averaged over ranks as DDP does."""
    model = _distill_model()
    teacher = EMATeacher(model, LossConfig(ssl="distill"), total_steps=10)
    inputs = {k: v[rows] for k, v in _inputs().items()}
    out = SLIPLoss.for_model(model)(model(**inputs) | teacher.targets(inputs))
    out["loss"].backward()
    distributed.average_gradients(model)
    teacher.update(model, step=0)
    return {
        "loss": distributed.all_reduce_mean(out["loss"].detach()),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "center": teacher.center.clone(),
    }


def _body(info: distributed.DistInfo) -> dict:
    half = B // info.world_size
    return _step(slice(info.rank * half, (info.rank + 1) * half))


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_holding_the_whole_batch():
    """Loss, every gradient and the centre on 2 gloo ranks against one process on the batch of 8, in float64."""
    results = run_distributed(_body, 2, timeout_s=300)
    one = _step(slice(0, B))
    assert torch.equal(results[0]["center"], results[1]["center"])  # all-reduced: the same bits on every rank
    diffs = [abs(results[0]["loss"].item() - one["loss"].item())]
    diffs.append((results[0]["center"] - one["center"]).abs().max().item())
    for name, grad in one["grads"].items():  # relative to the gradient's size (up to ~75 here)
        for r in results:
            diffs.append((r["grads"][name] - grad).abs().max().item() / max(1.0, grad.abs().max().item()))
    # 9.9e-14 absolute measured, as much as one process on 1 vs 2 threads differs (the sums' order)
    assert max(diffs) < 1e-12, max(diffs)


def _teacher_state(run: Path) -> dict[str, torch.Tensor]:
    path = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return ckpt.load_train_state(path)["teacher"]


def test_resume_restores_the_teacher_and_its_centre_bit_exactly(tmp_path):
    args = [*DISTILL, "train.steps=4", "ckpt.every_steps=2", "ckpt.keep_last=5"]
    run = tmp_path / "run"
    assert main(["train", *overrides(run, *args)]) == 0
    uninterrupted = _teacher_state(run)
    assert set(uninterrupted) >= {"center", "visual.patch_embed.proj.weight"} or "center" in uninterrupted
    rewind(run, "step_0000004", "step_0000002")
    assert main(["train", *overrides(run, *args)]) == 0
    resumed = _teacher_state(run)
    assert set(resumed) == set(uninterrupted)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert uninterrupted["center"].abs().sum() > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["loss.ssl=dino"], "loss.ssl='dino' is not valid; choose one of: simclr, distill, none"),
        ([*DISTILL[:2], "loss.local_crops=0"], "needs local crops: set loss.local_crops >= 1"),
        ([*DISTILL, "loss.teacher_momentum=1.5"], "loss.teacher_momentum=1.5 must be in [0, 1]"),
        ([*DISTILL, "loss.teacher_momentum=-0.1"], "loss.teacher_momentum=-0.1 must be in [0, 1]"),
        (["model=clip_vit_micro", "loss.ssl=distill"], "model=clip_vit_micro is CLIP-only"),
    ],
)
def test_bad_distillation_settings_are_one_line(tmp_path, capsys, args, needle):
    assert main(["train", f"out_dir={tmp_path}", "train.steps=1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_a_collapsing_teacher_is_named_in_one_line(tmp_path, capsys):
    """A teacher temperature of 100 makes every target near uniform: the run says so once, and logs the entropy."""
    args = [*DISTILL, "train.steps=3", "loss.teacher_temperature=100"]
    assert main(["train", *overrides(tmp_path, *args)]) == 0
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "near uniform" in line]
    assert len(lines) == 1, out.out + out.err
    assert "lower loss.teacher_temperature" in lines[0]


def test_collapse_lines_read_the_logged_metrics():
    cfg = with_distill_head(model_config("slip_vit_micro"))
    log_k = math.log(cfg.distill_head.out_dim)
    healthy = {"teacher_entropy": 0.5 * log_k, "teacher_batch_entropy": 2.0, "ssl_rank": 5.0}
    assert collapse_warnings(healthy, cfg, batch_size=16) == []
    kinds = [kind for kind, _ in collapse_warnings({**healthy, "teacher_entropy": log_k}, cfg, 16)]
    assert kinds == ["uniform"]
    kinds = [k for k, _ in collapse_warnings({**healthy, "teacher_batch_entropy": 0.1, "ssl_rank": 1.1}, cfg, 16)]
    assert kinds == ["one_prototype", "rank"]
    assert collapse_warnings(healthy, model_config("slip_vit_micro"), 16) == []  # no distillation head


def test_center_update_is_the_batch_mean_on_one_process():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, 2, 5, generator=g, dtype=torch.float64)
    center = torch.randn(5, generator=g, dtype=torch.float64)
    expected = 0.9 * center + 0.1 * logits.reshape(-1, 5).mean(0)
    assert (center_update(center, logits, 0.9) - expected).abs().max().item() < 1e-15
