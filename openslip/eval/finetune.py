"""End-to-end finetuning of the image tower, BEiT-style (Bao et al. 2022, App. D; the SLIP paper §4.3).

The pre-trained ViT gets a fresh linear head (weights trunc-normal 0.02 x 0.001, BEiT's ``init_scale``)
and drop-path, and is trained with AdamW, per-step linear warm-up + cosine decay, layer-wise learning-rate
decay (block ``i`` of ``L`` gets ``decay^(L + 1 - (i + 1))`` of the rate, the patch/position embeddings
``decay^(L + 1)``, the final norm and head the full rate; groups come from ``visual.group_matcher()``),
no weight decay on biases / norms / ``no_weight_decay()`` names, Mixup / CutMix (switching 50/50 per
batch) and label smoothing. Training images go through ``data.augment.classify.FinetuneTransform``: RandomResizedCrop,
flip, RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing (p 0.25, per-pixel noise), as BEiT
(``openslip.data.augment.randaugment``). The SLIP paper's recipe per size is in ``PRESETS``; the learning rate
scales linearly with the global batch (4e-3 at 1024).

Reproducibility: every random draw is a function of the seed and the position in the run: the data order
of ``epoch_shard(seed, epoch)``, each sample's augmentation of (seed, epoch, sample index) (the same on
any number of ranks and loader workers), drop-path masks and Mixup / CutMix of (seed, epoch, rank). So a
run resumed from its per-epoch checkpoint (``out_dir``) ends with the same weights as one never stopped.
``precision`` "bf16" / "fp16" runs forward passes under autocast (fp16 with loss scaling); the loss is fp32.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from openslip import distributed
from openslip.data.augment.randaugment import parse_randaug
from openslip.errors import CheckpointError, ConfigError
from openslip.eval.best_of import best_and_final, check_report
from openslip.eval.features import extract_features
from openslip.eval.linear import epoch_loader
from openslip.eval.metrics import classification_metrics
from openslip.models import model_config
from openslip.models.config import VisionConfig
from openslip.models.vision import VisionTransformer
from openslip.optim import param_groups, warmup_cosine
from openslip.overrides import setting_changes
from openslip.step import AMP_DTYPES, OptimStep, check_finite
from openslip.weights.atomic import atomic_file
from openslip.weights.safe_load import torch_load_data

PRECISIONS = ("fp32", *AMP_DTYPES)
STATE_FILE = "finetune_state.pt"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Finetuning hyper-parameters (defaults: the paper's ViT-B/16 recipe)."""

    epochs: int = 100
    """Training epochs."""
    warmup_epochs: float = 20
    """Linear warm-up from 0, in epochs (per-step schedule)."""
    batch_size: int = 1024
    """Global batch size, split evenly over ranks."""
    base_lr: float = 4e-3
    """Peak learning rate at a global batch of 1024 (scaled linearly with the batch)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine."""
    weight_decay: float = 0.05
    """AdamW weight decay (not on biases, norms, position embedding, CLS token)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    layer_decay: float = 0.65
    """Layer-wise lr decay factor per block from the top."""
    drop_path: float = 0.1
    """Stochastic depth rate of the last block (linearly increasing with depth)."""
    mixup_alpha: float = 0.8
    """Mixup Beta(alpha, alpha); 0 disables."""
    cutmix_alpha: float = 1.0
    """CutMix Beta(alpha, alpha); 0 disables."""
    label_smoothing: float = 0.1
    """Label smoothing of the (mixed) one-hot targets."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    flip: bool = True
    """Random horizontal flips of the training images."""
    randaug: str | None = "rand-m9-mstd0.5-inc1"
    """RandAugment policy (timm syntax, see ``parse_randaug``); None or "none" turns it off. Like
    ``crop_scale`` and ``reprob``, applied by the train set's ``FinetuneTransform.from_config``."""
    reprob: float = 0.25
    """Random-erasing probability per image (one box, per-pixel noise); 0 turns it off."""
    precision: str = "fp32"
    """fp32, bf16 (autocast) or fp16 (autocast + loss scaling)."""
    seed: int = 0
    """Seeds the head init, the data order, the augmentation, drop-path and the mixing."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0 or self.warmup_epochs < 0:
            raise ConfigError("finetune: epochs, batch_size, base_lr must be positive, warmup_epochs >= 0")
        if not 0 < self.layer_decay <= 1 or not 0 <= self.drop_path < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("finetune: need 0 < layer_decay <= 1, 0 <= drop_path < 1, 0 <= label_smoothing < 1")
        if not 0 <= self.reprob <= 1:
            raise ConfigError(f"finetune: reprob must be a probability in [0, 1], got {self.reprob}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"finetune: precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.seed < 0:
            raise ConfigError(f"finetune: seed must be >= 0, got {self.seed}")
        parse_randaug(self.randaug)  # a bad policy string fails here, not in a loader worker

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 1024


# The SLIP paper's finetuning recipes (after BEiT); "demo" is a CPU-sized run on the demo world. The demo
# tasks' labels are properties that BEiT's augmentations change: colours (RandAugment's colour ops; Invert
# turns red into cyan), positions (flips, crops), shapes (at 64 px a random-resized crop often cuts the object
# or its outline). Measured on the README's demo model, 5 epochs on demo_shapes: 16% with BEiT's crops, mixup
# 0.2 and erasing (base lr 4e-3), 43% with whole images, no mixup or erasing (base lr 1.6e-2). So the demo
# preset keeps the recipe's optimiser (layer decay, warm-up + cosine, label smoothing) and drops the
# label-changing augmentations.
PRESETS: dict[str, FinetuneConfig] = {
    "vit_s16": FinetuneConfig(epochs=100, warmup_epochs=20, layer_decay=0.65, drop_path=0.0),
    "vit_b16": FinetuneConfig(epochs=100, warmup_epochs=20, layer_decay=0.65, drop_path=0.1),
    "vit_l16": FinetuneConfig(epochs=50, warmup_epochs=5, layer_decay=0.75, drop_path=0.1),
    "demo": FinetuneConfig(
        epochs=10,
        warmup_epochs=1,
        batch_size=64,
        base_lr=1.6e-2,
        layer_decay=0.75,
        drop_path=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        crop_scale=(1.0, 1.0),
        flip=False,
        randaug=None,
        reprob=0.0,
    ),
}


def preset_for(vision: VisionConfig) -> str:
    """The preset of an image tower: the paper's ViT-S/B/L by its shape (width, depth, patch), else 'demo' for
    the small models. The shape decides, not the model's name: converted or renamed weights get the same."""
    for size in ("vit_s16", "vit_b16", "vit_l16"):
        ref = model_config(f"slip_{size}").vision
        if (vision.width, vision.layers, vision.patch_size) == (ref.width, ref.layers, ref.patch_size):
            return size
    return "demo"


def build_classifier(model: Any, num_classes: int, drop_path: float, seed: int = 0) -> VisionTransformer:
    """A copy of ``model.visual`` with drop-path and a fresh ``num_classes`` head (BEiT's head init)."""
    src = model.visual
    vit = VisionTransformer(src.cfg, num_classes=num_classes, drop_path_rate=drop_path)
    missing, unexpected = vit.load_state_dict(src.state_dict(), strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise RuntimeError(f"backbone copy mismatch: missing {missing}, unexpected {unexpected}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vit.head.weight.copy_(torch.randn(vit.head.weight.shape, generator=gen).clamp_(-2, 2) * 0.02 * 1e-3)
        vit.head.bias.zero_()
    return vit.to(next(src.parameters()).device)


def layer_id(name: str, vit: VisionTransformer) -> int:
    """0 for the stem, i + 1 for block i, L + 1 for the final norm and the head (from ``group_matcher``)."""
    groups = vit.group_matcher()
    if re.match(str(groups["stem"]), name):
        return 0
    m = re.match(str(groups["blocks"]), name)
    if m:
        return int(m.group(1)) + 1
    return len(vit.blocks) + 1


def classifier_param_groups(vit: VisionTransformer, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """BEiT's AdamW groups: ``lr_scale`` = layer_decay^(L + 1 - layer_id); no weight decay on biases, norms and
    the ViT's ``no_weight_decay()`` names (position embedding, CLS token)."""
    return param_groups(
        vit,
        weight_decay,
        no_decay_names=vit.no_weight_decay(),
        layer_of=lambda name: layer_id(name, vit),
        layer_decay=layer_decay,
    )


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(labels), num_classes), off, device=labels.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off
    )


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: FinetuneConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (chosen 50/50 when both are on) with the batch reversed as partner; soft targets."""
    target = smooth_one_hot(labels, num_classes, cfg.label_smoothing)
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if not (use_mixup or use_cutmix):
        return images, target
    cutmix = use_cutmix and (not use_mixup or rng.random() < 0.5)
    lam = float(rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha) if cutmix else rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
    partner = images.flip(0)
    if cutmix:
        h, w = images.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    else:
        images = images * lam + partner * (1 - lam)
    return images, target * lam + target.flip(0) * (1 - lam)


# --- per-sample seeding of the training augmentation ----------------------------------------------------


def stream_seed(*keys: int) -> int:
    """A 64-bit seed for one random stream named by non-negative ints (numpy's SeedSequence hashing)."""
    lo, hi = np.random.SeedSequence(list(keys)).generate_state(2, np.uint32).tolist()
    return lo | hi << 32


# Stream tags: the per-sample augmentation, drop-path masks, Mixup / CutMix.
_SAMPLE, _DROP_PATH, _MIX = 0, 1, 2


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[i]`` drawn with torch's global CPU RNG seeded from (seed, epoch, i), then restored.

    The augmentation of a sample then depends on nothing else: not on the rank or loader worker that
    loads it, nor on whether the run was resumed, so resumed and multi-process runs see the same images.
    Only the CPU generator is touched (``torch.manual_seed`` would also reseed the GPU's, which draws the
    drop-path masks when loading runs in the training process).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(self.seed, _SAMPLE, self.epoch, i))
            return self.dataset[i]


# --- per-epoch checkpoint -------------------------------------------------------------------------------


def _checksum(module: torch.nn.Module) -> float:
    """Sum of all weights in float64: tells two backbones apart without storing them."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in module.state_dict().values() if p.is_floating_point()))


def _run_identity(cfg: FinetuneConfig, model: Any, train_set: Any, num_classes: int, world: int) -> dict[str, Any]:
    """What must match for a checkpoint to continue this run."""
    return {
        "config": asdict(cfg),
        "num_classes": num_classes,
        "train_set": f"{getattr(train_set, 'identity', type(train_set).__name__)} (n={len(train_set)})",
        "world_size": world,
        "backbone_checksum": _checksum(model.visual),
    }


def _identity_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key saved -> now` for each setting of this run's identity that differs from the saved one's (a key only the
    saved state has is not compared; the backbone by its checksum, to float rounding)."""
    diffs = []
    for path, a, b in setting_changes(saved, now, missing=None):
        if b is None and path[0] not in now:
            continue
        if path[0] == "backbone_checksum":
            if not isinstance(a, float) or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                diffs.append("a different pre-trained backbone")
            continue
        key = ".".join(map(str, path[1:] if path[0] == "config" and len(path) > 1 else path))
        diffs.append(f"{key} {a!r} -> {b!r}")
    return diffs


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to a temporary file and rename it over ``path``: a crash leaves the previous epoch's."""
    with atomic_file(path) as f:
        torch.save(state, f)


def load_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """A finetuning checkpoint, refused (CheckpointError) when it belongs to another run."""
    state = torch_load_data(path)
    if not isinstance(state, dict) or state.get("format") != "openslip-finetune":
        raise CheckpointError(f"{path}: not an openslip finetuning checkpoint")
    diffs = _identity_differences(state.get("run", {}), identity)
    if diffs:
        raise CheckpointError(
            f"{path}: written by a different finetuning run ({'; '.join(diffs)}); rerun with its settings, "
            "or start over with --no-resume or another --out-dir"
        )
    return state


# --- the loop -------------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets, in float32 whatever the autocast dtype of the logits."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _check_arguments(
    cfg: FinetuneConfig,
    report: str,
    eval_every: int,
    world: int,
    device: torch.device,
    out_dir: str | os.PathLike | None,
    resume: bool | None,
) -> Path | None:
    """One-line errors for arguments that cannot run; returns the state file's path (None: no out_dir)."""
    check_report(report)
    if eval_every < 0:
        raise ConfigError(f"finetune: eval_every must be >= 0 (0: score only after the last epoch), got {eval_every}")
    if cfg.batch_size % world:
        raise ConfigError(f"finetune: batch size {cfg.batch_size} is not divisible by {world} processes")
    if cfg.precision != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"finetune: precision {cfg.precision} needs autocast, which {device.type} does not support")
    state_path = Path(out_dir).expanduser() / STATE_FILE if out_dir is not None else None
    if resume and state_path is None:
        raise ConfigError("finetune: resuming needs an output directory (--out-dir)")
    if resume and not state_path.is_file():  # type: ignore[union-attr]
        raise ConfigError(f"finetune: nothing to resume: no {STATE_FILE} in {out_dir}")
    return state_path


def _train_epoch(
    vit: VisionTransformer,
    opt: OptimStep,
    loader: Any,
    step: int,
    num_classes: int,
    cfg: FinetuneConfig,
    rng: np.random.Generator,
    last_good: str,
) -> tuple[int, float]:
    """One epoch of mixed batches through the shared optimisation step; returns (next step, mean loss)."""
    device = next(vit.parameters()).device
    seen, loss_sum = 0, 0.0
    for images, labels in loader:
        opt.set_lr(step)
        x, target = mix_batch(images.to(device), labels.to(device), num_classes, cfg, rng)
        with opt.autocast():
            logits = vit(x)
        loss = soft_cross_entropy(logits, target)
        check_finite(loss, what="finetuning", step=step, detail="; " + last_good)
        opt.backward(loss)
        distributed.average_gradients(vit)  # averaging scaled gradients commutes with the unscaling
        opt.update(vit.parameters())
        step += 1
        seen, loss_sum = seen + len(labels), loss_sum + loss.item() * len(labels)
    return step, loss_sum / max(seen, 1)


def finetune(
    model: Any,
    train_set: torch.utils.data.Dataset,
    test_set: torch.utils.data.Dataset,
    *,
    num_classes: int,
    metric: str = "top1",
    config: FinetuneConfig | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    eval_every: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool | None = None,
    log: bool = True,
    report: str = "best",
) -> tuple[dict[str, float], VisionTransformer]:
    """Finetune ``model.visual`` on train_set (augmented images), score test_set; returns (metrics, classifier).

    test_set is scored every ``eval_every`` epochs and after the last; ``report`` "best" gives the best of those
    (BEiT's ``max_accuracy``), "final" the last; both are in the metrics (``best_score``, ``best_epoch``,
    ``final_score``). The returned classifier is the last epoch's.

    Data-parallel over ranks: each rank trains on its shard of every epoch and gradients are averaged.
    With ``out_dir`` the state is saved there after every epoch (``finetune_state.pt``, atomically);
    ``resume`` None continues from it when present, True requires it, False starts over.
    """
    cfg = config or FinetuneConfig()
    world, rank = distributed.world_size(), distributed.rank()
    device = torch.device(device)
    state_path = _check_arguments(cfg, report, eval_every, world, device, out_dir, resume)
    per_rank = cfg.batch_size // world
    vit = build_classifier(model, num_classes, cfg.drop_path, cfg.seed).to(device)
    n = len(train_set)  # type: ignore[arg-type]
    steps_per_epoch = math.ceil(math.ceil(n / world) / per_rank)
    total, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    opt = OptimStep(
        torch.optim.AdamW(classifier_param_groups(vit, cfg.weight_decay, cfg.layer_decay), lr=cfg.lr, betas=cfg.betas),
        schedule=lambda step: warmup_cosine(step, total, warmup=warmup, peak=cfg.lr, floor=cfg.min_lr),
        device_type=device.type,
        precision=cfg.precision,
    )
    history: dict[str, float] = {}
    evaluations: dict[int, dict[str, float]] = {}
    identity = _run_identity(cfg, model, train_set, num_classes, world)
    step, start_epoch = 0, 0
    if state_path is not None and resume is not False and state_path.is_file():
        state = load_state(state_path, identity)
        vit.load_state_dict(state["classifier"])
        opt.load_state_dict(state)
        step, start_epoch, history = state["step"], state["epoch"], dict(state["history"])
        evaluations = {int(k): dict(v) for k, v in state.get("evaluations", {}).items()}
        if log and distributed.is_main():
            print(f"  finetune: resumed from {state_path} after epoch {start_epoch}/{cfg.epochs}", flush=True)

    def evaluate() -> dict[str, float]:
        vit.eval()
        with opt.autocast():
            logits, labels = extract_features(vit, test_set, batch_size=per_rank, device=device, normalize=False)
        vit.train()
        return classification_metrics(logits, labels, metric)

    vit.train()
    last_good = "no state was saved (--out-dir keeps one per epoch)"
    if state_path is not None and start_epoch > 0:
        last_good = f"the last good state is {state_path} (epoch {start_epoch})"
    for epoch in range(start_epoch, cfg.epochs):
        # Every stream restarts from (seed, epoch, ...) so that a resumed epoch draws what it would have drawn.
        torch.manual_seed(stream_seed(cfg.seed, _DROP_PATH, epoch, rank))  # drop-path masks differ per rank
        rng = np.random.default_rng(stream_seed(cfg.seed, _MIX, epoch, rank))
        data = SeededSamples(train_set, cfg.seed, epoch)
        loader = epoch_loader(data, epoch, cfg.seed, rank, world, per_rank, num_workers)
        step, mean_loss = _train_epoch(vit, opt, loader, step, num_classes, cfg, rng, last_good)
        if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < cfg.epochs:
            evaluations[epoch + 1] = evaluate()
            history[f"epoch{epoch + 1}_score"] = evaluations[epoch + 1]["score"]
        if log and distributed.is_main():
            print(
                f"  finetune epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}, lr {opt.schedule(step - 1):.2e}",
                flush=True,
            )
        if state_path is not None and distributed.is_main():
            state = {
                "format": "openslip-finetune",
                "run": identity,
                "epoch": epoch + 1,
                "step": step,
                "classifier": {k: v.detach().cpu() for k, v in vit.state_dict().items()},
                **opt.state_dict(),  # "optimizer" and "scaler"
                "history": history,
                "evaluations": evaluations,
            }
            save_state(state_path, state)
            last_good = f"the last good state is {state_path} (epoch {epoch + 1}); run the command again to resume"
    evaluations[cfg.epochs] = evaluate()
    out = best_and_final(evaluations, report)
    out.update({"lr": cfg.lr, "epochs": float(cfg.epochs), "batch_size": float(cfg.batch_size), **history})
    return out, vit.eval()


def config_from_preset(name: str, **overrides: Any) -> FinetuneConfig:
    """A preset with some fields replaced (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown finetune preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
