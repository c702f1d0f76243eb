"""Typed training configs: sections as keyword-only dataclasses, YAML files and `key.path=value` overrides.

Every field has a one-line doc; each section's `__post_init__` checks its own fields (the checks across sections
and against the model registry are `openslip.train.checks`); an unknown key or a value of the wrong type is a
`ConfigError` naming the key and the valid choices. Recipes live in `openslip.train.recipes`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from openslip import files
from openslip.data.demo.tasks import demo_task_names
from openslip.data.formats.decode import DecodeOptions
from openslip.data.sources import split_weight, split_weights
from openslip.errors import ConfigError, DataError
from openslip.losses import CONTRASTIVES, SSL_BRANCHES
from openslip.overrides import build, check_choice, field_keys, option_key

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
GATHERS = ("grad", "reference")
AUGMENT_PATHS = ("cpu", "device")
DECODE_PATHS = ("cpu", "device")
IMAGE_VIEWS = ("clip", "simclr")
WORKER_PRIORITIES = ("auto", "idle", "normal")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
PARALLEL_MODES = ("ddp", "fsdp")  # openslip.train.parallel
BEST_MODES = ("max", "min")  # the evaluations' scores are % where higher is better; "min" for a metric that falls


_choice = check_choice


def _positive(key: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


@dataclass(kw_only=True)
class DataConfig:
    # "demo", a manifest (.csv/.tsv/.jsonl), an image folder, shards ("data-{000..009}.tar"), or a list of them; a
    # list may weigh its sources, [a.csv::0.7,b.csv::0.3] (docs/TRAINING.md, 'Weighted sources and resampled shards')
    train: str | list[str] = "demo"
    format: str | None = None  # force a source format (see `openslip data inspect`); None: from the path
    image_size: int | None = None  # training resolution; None: the model's
    num_workers: int = 2  # loader worker processes per rank (0: load in the training process)
    augment: str = "cpu"  # "cpu": augment in loader workers; "device": batched on the training device
    # "cpu": workers decode; "device": workers hand over JPEG bytes and the batch is decoded on the training device
    # (nvJPEG via torchvision on CUDA); needs data.augment=device; other files are decoded in the workers, counted
    decode: str = "cpu"
    image_view: str = "clip"  # CLIP view's augmentation: "clip" (crop 0.5-1) or "simclr" (the SimCLR views' recipe)
    worker_priority: str = "auto"  # loader workers' CPU priority: "idle" (SCHED_IDLE), "normal"; auto: idle on CPU
    max_skip_rate: float = 0.1  # stop the run when the skipped fraction is significantly above this (TRAINING.md)
    min_samples_for_skip_check: int = 100  # samples seen before data.max_skip_rate is checked
    max_file_bytes: int = 64 * 1024 * 1024  # image files / tar members larger than this are skipped unread
    max_pixels: int = 100_000_000  # images whose header claims more pixels are skipped before decoding
    jpeg_draft: bool = True  # decode large JPEGs at a reduced scale keeping both sides >= 2x image_size
    exif_transpose: bool = True  # turn images upright by their EXIF orientation tag (phone photos)
    demo_size: int = 100_000  # demo world: samples per epoch of the training split
    # unpaired images (folders, manifests, shards, or a list; captions unread) that only the SSL term reads, beside
    # the pairs of data.train (docs/TRAINING.md, 'Unpaired images'); None: none
    train_images: str | list[str] | None = None
    # unpaired images per step (global, like train.batch_size); None: train.batch_size, a 1:1 mix with the pairs
    image_batch_size: int | None = None
    # draw with replacement: shards per loader worker (open_clip's --dataset-resampled), or samples of map-style
    # sources; an epoch is then nominal, the data's size (docs/TRAINING.md, 'Weighted sources and resampled shards')
    resampled: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.train, list):
            if not self.train:
                raise ConfigError("data.train=[] names no data: give a path, or a list of paths")
            plain = [split_weight(str(s))[0] for s in self.train]
            repeated = next((s for i, s in enumerate(plain) if s in plain[:i]), None)
            if repeated is not None:  # a repeat would silently double that source: weights say it openly
                raise ConfigError(
                    f"data.train lists {repeated!r} twice: each source is read once per epoch (to read a source "
                    "more often, weigh the sources: SPEC::WEIGHT)"
                )
        for key in ("train", "train_images"):
            specs = getattr(self, key)
            if specs is not None:
                try:  # the weights' syntax is checked here, before any file is opened
                    split_weights([str(s) for s in specs] if isinstance(specs, list) else [str(specs)], f"data.{key}")
                except DataError as err:
                    raise ConfigError(str(err)) from None
        _choice("data.augment", self.augment, AUGMENT_PATHS)
        _choice("data.decode", self.decode, DECODE_PATHS)
        if self.decode == "device" and self.augment != "device":
            # the views are rendered from the decoded batch where it is: the workers no longer have the pixels
            raise ConfigError(
                "data.decode=device needs data.augment=device (the views are made from the decoded batch)"
            )
        _choice("data.image_view", self.image_view, IMAGE_VIEWS)
        _positive("data.image_size", self.image_size)
        _positive("data.image_batch_size", self.image_batch_size)
        if isinstance(self.train_images, list) and not self.train_images:
            raise ConfigError("data.train_images=[] names no images: give a path, a list of paths, or leave it unset")
        if self.image_batch_size is not None and self.train_images is None:
            raise ConfigError("data.image_batch_size sizes the unpaired images of data.train_images, which is unset")
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        _choice("data.worker_priority", self.worker_priority, WORKER_PRIORITIES)
        if not 0.0 <= self.max_skip_rate <= 1.0:
            raise ConfigError(f"data.max_skip_rate={self.max_skip_rate} must be in [0, 1]")
        _positive("data.min_samples_for_skip_check", self.min_samples_for_skip_check, allow_zero=True)
        _positive("data.max_file_bytes", self.max_file_bytes)
        _positive("data.max_pixels", self.max_pixels)

    def decode_options(self, image_size: int) -> DecodeOptions:
        """How the loader decodes images at the training resolution `image_size` (the model's, or data.image_size)."""
        return DecodeOptions(
            max_pixels=self.max_pixels,
            max_bytes=self.max_file_bytes,
            # Both views' crops are cut from the decoded image and resized to image_size: a JPEG decoded at >= 2x
            # that size keeps the full-size crops (scale >= 0.25) from being upsampled, at a fraction of the cost.
            draft_size=2 * image_size if self.jpeg_draft else None,
            exif_transpose=self.exif_transpose,
            keep_jpeg=self.decode == "device",
        )


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 600  # optimizer steps in the run
    batch_size: int = 64  # global batch (all ranks, all accumulation micro-batches): the contrastive batch
    accum_steps: int = 1  # micro-batches per step; the loss is still over the whole batch (exact, GradCache-style)
    precision: str = "fp32"  # "fp32", "bf16" (autocast), "fp16" (autocast + loss scaling), "fp64" (numerics checks)
    grad_clip: float | None = None  # clip the global gradient norm to this value; None: no clipping
    grad_checkpointing: bool = False  # recompute activations in the backward pass to save memory
    # torch.compile the model: true, false, or "auto" (on for CUDA, off for CPU); kernels cached (docs/PERFORMANCE.md)
    compile: bool | str = False
    # torch.compile's mode when compiled. "reduce-overhead" (and "max-autotune") also replay the compiled forward and
    # backward as CUDA graphs: a few launches instead of hundreds of small kernels, for launch-bound models (S/16)
    compile_mode: str = "default"
    # how several processes hold the model: "ddp" (a whole copy each) or "fsdp" (FSDP2: weights, gradients and AdamW
    # state sharded over the processes; docs/TRAINING.md, 'Sharded training (FSDP)'); one process: no difference
    parallel: str = "ddp"
    # FLIP's patch dropout (Li et al. 2023): drop this fraction of each training image's patch tokens. It changes the
    # method (a speed/accuracy trade-off, FLIP uses 0.5), so it is off by default; evaluation always sees every patch.
    patch_dropout: float = 0.0
    log_every: int = 10  # write metrics every N steps
    progress: bool = True  # show a progress bar (rank 0, interactive terminals; else plain lines)
    print_every: int = 0  # plain progress lines (output not a terminal, or progress=false) every N steps; 0: ~10
    print_every_s: float = 30.0  # ... and at least every this many seconds, so a slow run is never silent
    threads: int | None = None  # torch intra-op threads on CPU; 0 / None: torch's default (capped at the cores)
    wandb: bool = False  # also log metrics.jsonl's records to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "openslip"  # the W&B project; the run is named after out_dir and resumes with it
    # seconds a collective waits for a silent rank (stuck, stopped, lost) before every other rank stops
    collective_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _choice("train.precision", self.precision, PRECISIONS)
        if isinstance(self.compile, str) and self.compile != "auto":
            raise ConfigError(f"train.compile={self.compile!r} is not valid; choose one of: true, false, auto")
        _choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        if self.compile is False and self.compile_mode != "default":
            raise ConfigError(f"train.compile_mode={self.compile_mode} needs train.compile=true or auto")
        _choice("train.parallel", self.parallel, PARALLEL_MODES)
        for key in ("steps", "batch_size", "accum_steps", "log_every", "collective_timeout_s"):
            _positive(f"train.{key}", getattr(self, key))
        _positive("train.grad_clip", self.grad_clip)
        _positive("train.print_every", self.print_every, allow_zero=True)
        _positive("train.print_every_s", self.print_every_s)
        _positive("train.threads", self.threads, allow_zero=True)
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ConfigError("train.wandb=true needs the wandb package: pip install wandb (or leave train.wandb off)")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ConfigError(f"train.patch_dropout must be in [0, 1) (FLIP uses 0.5), got {self.patch_dropout}")
        if self.patch_dropout > 0 and self.accum_steps > 1:
            raise ConfigError(
                "train.patch_dropout needs train.accum_steps=1: exact accumulation encodes each micro-batch twice "
                "and would drop different patches the second time"
            )
        if self.batch_size % self.accum_steps:
            b, a = self.batch_size, self.accum_steps
            raise ConfigError(f"train.batch_size={b} is not divisible by train.accum_steps={a}")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-3  # peak learning rate (after warm-up)
    wd: float = 0.1  # AdamW weight decay (not applied to norms, biases, logit_scale, embeddings of ndim < 2)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (SLIP reference)
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 60  # linear warm-up from `start_lr` to `lr`
    start_lr: float = 1e-6  # learning rate at step 0
    end_lr: float = 1e-5  # learning rate at the last step (cosine decay)

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.eps", self.eps)
        _positive("optim.start_lr", self.start_lr, allow_zero=True)
        _positive("optim.end_lr", self.end_lr, allow_zero=True)
        _positive("optim.wd", self.wd, allow_zero=True)
        _positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas} must be in [0, 1)")


@dataclass(kw_only=True)
class LossConfig:
    ssl_scale: float = 1.0  # weight of the SimCLR term (0: CLIP only)
    clip_scale: float = 1.0  # weight of the CLIP term (0: SimCLR only)
    ssl_temperature: float = 0.1  # NT-Xent temperature
    gather: str = "grad"  # "grad": exact global-batch gradients; "reference": the 2021 code's no-grad gather
    # the image-text term: "softmax" (CLIP's InfoNCE) or "sigmoid" (SigLIP's pairwise sigmoid; docs/OBJECTIVES.md)
    contrastive: str = "softmax"
    # the self-supervised term: "simclr" (SLIP), "distill" (self-distillation from an EMA teacher, DINO's loss as SILC
    # and SigLIP 2 use it; docs/OBJECTIVES.md) or "none" (no SSL term: loss.ssl_scale is then 0)
    ssl: str = "simclr"
    local_crops: int = 8  # loss.ssl=distill: local crops per image beside the 2 global views (DINO's default 8)
    teacher_momentum: float = 0.996  # loss.ssl=distill: EMA momentum at step 0, raised to 1 on a cosine (DINO)
    teacher_temperature: float = 0.04  # loss.ssl=distill: the teacher's sharpening temperature (DINO)
    distill_temperature: float = 0.1  # loss.ssl=distill: the student's temperature (DINO)
    center_momentum: float = 0.9  # loss.ssl=distill: EMA momentum of the centre of the teacher's outputs (DINO)

    def __post_init__(self) -> None:
        _choice("loss.gather", self.gather, GATHERS)
        _choice("loss.contrastive", self.contrastive, CONTRASTIVES)
        _choice("loss.ssl", self.ssl, SSL_BRANCHES)
        if self.ssl == "none":
            self.ssl_scale = 0.0
        for key in ("teacher_momentum", "center_momentum"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"loss.{key}={getattr(self, key)} must be in [0, 1] (DINO: 0.996 and 0.9)")
        _positive("loss.teacher_temperature", self.teacher_temperature)
        _positive("loss.distill_temperature", self.distill_temperature)
        _positive("loss.local_crops", self.local_crops, allow_zero=True)
        if self.ssl == "distill" and self.local_crops < 1:
            raise ConfigError(
                "loss.ssl=distill learns local-to-global correspondences and needs local crops: set loss.local_crops "
                ">= 1 (DINO uses 8 beside the 2 global views)"
            )
        if self.contrastive == "sigmoid" and self.gather != "grad":
            raise ConfigError(
                "loss.gather=reference reproduces the 2021 code's CLIP loss, which had no sigmoid variant: "
                "use loss.gather=grad with loss.contrastive=sigmoid"
            )
        _positive("loss.ssl_scale", self.ssl_scale, allow_zero=True)
        _positive("loss.clip_scale", self.clip_scale, allow_zero=True)
        _positive("loss.ssl_temperature", self.ssl_temperature)
        if self.ssl_scale == 0 and self.clip_scale == 0:
            raise ConfigError("loss.ssl_scale and loss.clip_scale are both 0: nothing to train")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int = 200  # save a checkpoint every N steps (and always at the end)
    keep_last: int = 3  # checkpoints kept in OUT_DIR/checkpoints

    def __post_init__(self) -> None:
        _positive("ckpt.every_steps", self.every_steps)
        _positive("ckpt.keep_last", self.keep_last)


@dataclass(kw_only=True)
class EvalConfig:
    # what to evaluate, each `EVALNAME:SET`: an evaluation of `openslip eval` (zeroshot, knn, linear, fewshot,
    # retrieval) on a set written as `openslip compare --eval-sets` takes it: a demo task (it brings its train split),
    # a labelled folder / CSV / shards `TEST[@TRAIN]` (a probe needs TRAIN), `CATALOG:PATH` for a catalog dataset's
    # class names, templates and metric (`zeroshot:imagenet:/data/imagenet/val`), `TEST#PROMPTS.json` for the set's
    # own. Opened and checked when the run starts (openslip.train.evals); results are `EVALNAME/NAME`
    # (`zeroshot/demo_shapes`)
    sets: list[str] = field(default_factory=lambda: ["zeroshot:demo_shapes", "zeroshot:demo_colours"])
    train_samples: int = 2000  # images of a probe's train split (a demo task renders them; a larger file set: a sample)
    every_steps: int = 200  # evaluate every N steps (and at the end); 0: only at the end
    # images of a demo task's test split, and the most of a probe's file test set (a seeded sample); zero-shot and
    # retrieval score a file set whole, as the paper's ImageNet zero-shot is over all its validation images
    samples: int = 1000
    prompts: str = "reference"  # a CATALOG:PATH set's prompts: "reference" (the 2021 reference's) or "clip_benchmark"
    # image files: centre crop / resized shorter side; None: each evaluation's protocol (openslip.eval.preprocess)
    crop_fraction: float | None = None
    # keep the checkpoint of the evaluation that scored best on this metric, a key of the evaluations' results as in
    # metrics.jsonl (`zeroshot/imagenet`: ImageNet zero-shot top-1, set as `zeroshot:imagenet:PATH`; `knn/NAME`); "":
    # keep no best. OUT_DIR/checkpoints/best names it (docs/TRAINING.md, "Best checkpoint"); needs eval.every_steps > 0
    best_metric: str = ""
    best_mode: str = "max"  # "max": higher is better (every score openslip reports); "min": lower is better

    def __post_init__(self) -> None:
        _positive("eval.every_steps", self.every_steps, allow_zero=True)
        _positive("eval.samples", self.samples)
        _positive("eval.train_samples", self.train_samples)
        _choice("eval.best_mode", self.best_mode, BEST_MODES)
        repeated = next((s for i, s in enumerate(self.sets) if s in self.sets[:i]), None)
        if repeated is not None:
            raise ConfigError(f"eval.sets lists {repeated!r} twice: each evaluation is run once per set")
        if self.best_metric and not self.every_steps:
            raise ConfigError(
                f"eval.best_metric={self.best_metric!r} needs eval.every_steps > 0 (the evaluations to choose the best "
                "from), e.g. one epoch's steps; or eval.best_metric='' to keep no best checkpoint"
            )
        if self.crop_fraction is not None and not 0.0 < self.crop_fraction <= 1.0:
            raise ConfigError(
                f"eval.crop_fraction must be in (0, 1] (1.0: resize to the image size, 0.875: to size / 0.875), "
                f"got {self.crop_fraction}"
            )


# Keys of `eval` that eval.sets replaced. Where the old keys say exactly what an eval.sets value says (the lists of
# eval.zeroshot / knn / linear, eval.catalog applied to eval.zeroshot's file sets), a config naming them (on the
# command line, in a YAML file, in an older run's config.yaml) is read as that eval.sets with a one-line warning that
# writes it, so scripts written for the old keys keep running; class names and template files, which now come with
# their set, are refused in one line. Resuming an older run needs no translation: resume leaves the eval keys free.
REPLACED_EVAL_KEYS = ("zeroshot", "knn", "linear", "classnames", "templates", "catalog")


def _replaced_eval_keys(values: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
    """(the `eval` section with the replaced keys read as eval.sets, the line saying so, whether that reading is
    exact). Not exact: class names or templates given, a catalog with no file set to apply to, or eval.sets given
    beside the old keys."""
    old = [k for k in REPLACED_EVAL_KEYS if k in values]
    catalog = values.get("catalog") if isinstance(values.get("catalog"), str) else None
    sets, catalog_used = [], False
    for kind in ("zeroshot", "knn", "linear"):
        given = values.get(kind)
        for spec in [given] if isinstance(given, str) else given if isinstance(given, list) else []:
            if kind == "zeroshot" and catalog and spec not in demo_task_names() and ":" not in str(spec):
                spec, catalog_used = f"{catalog}:{spec}", True  # eval.catalog applied to eval.zeroshot's file sets
            sets.append(f"{kind}:{spec}")
    keys = ", ".join(f"eval.{k}" for k in old)
    hints = []
    if any(k in values for k in ("zeroshot", "knn", "linear")):
        hints.append(f"{'write' if len(old) == 1 else 'remove them and write'} eval.sets=[{','.join(sets)}]")
    if catalog and not catalog_used:
        hints.append(f"a catalog entry goes before its set: eval.sets=[zeroshot:{catalog}:PATH]")
    files = any(values.get(k) is not None for k in ("classnames", "templates"))
    if files:
        hints.append(
            'class names and templates come with a set: TEST#PROMPTS.json ({"classnames": [...], "templates": [...]})'
        )
    line = f"{keys} {'was' if len(old) == 1 else 'were'} replaced by eval.sets, a list of EVALNAME:SET"
    line += (": " + "; ".join(hints)) if hints else " (docs/TRAINING.md)"
    exact = not files and (catalog is None or catalog_used) and "sets" not in values
    translated = {k: v for k, v in values.items() if k not in REPLACED_EVAL_KEYS} | {"sets": sets}
    return translated, line, exact


@dataclass(kw_only=True)
class Config:
    # the recipe these values started from (`openslip train recipe=NAME`); unnamed: demo, or custom for own data
    recipe: str = "demo"
    model: str = "slip_vit_tiny"  # registered model name (`openslip.list_models()`)
    head_norm: str | None = None  # SimCLR head norm: "bn", "ln", "none"; None: the model's default (bn)
    out_dir: str = "runs/demo"  # run directory: config, metrics, checkpoints, plots
    seed: int = 0  # seeds the model init, the data order and the augmentations
    resume: str = "auto"  # "auto": continue from OUT_DIR's newest checkpoint if any; "none"; or a checkpoint path
    resume_force: bool = False  # resume even when the checkpoint's model, data, loss, optim or seed settings differ
    # start from these weights (checkpoint, run dir, converted or OpenAI / open_clip file); optimizer and step fresh
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        # the model, its loss terms and the image size are checked together by train/checks.py (`check_config`)
        if self.head_norm is not None:
            _choice("head_norm", self.head_norm, ("bn", "ln", "none"))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d


# --- building configs from dicts, YAML and overrides (the generic part: openslip.overrides) -------------


def config_keys(cls: type = None, prefix: str = "") -> list[str]:  # type: ignore[assignment]
    """Every dotted key of the config (`train.steps`, `model`, ...)."""
    return field_keys(cls or Config, prefix)


def option_as_override(option: str) -> str | None:
    """The dotted key an option such as `--steps` or `--train.batch-size` means, when exactly one matches."""
    return option_key(option, Config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    text = files.read_text(p, limit=files.CONFIG_BYTES, error=ConfigError)  # a FIFO or a huge file: one line
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} should hold a mapping of keys, not {type(data).__name__}")
    return data


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a saved (resolved) config exactly, without applying a recipe."""
    section = values.get("eval")
    if isinstance(section, dict) and any(k in section for k in REPLACED_EVAL_KEYS):
        raise ConfigError(_replaced_eval_keys(section)[1])
    return build(Config, values)


def read_replaced_eval_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The settings a user gave (command line and YAML, before the recipe's), with the replaced `eval` keys read as
    the eval.sets they mean, with a one-line warning; refused in one line where no eval.sets means the same."""
    section = values.get("eval")
    if not isinstance(section, dict) or not any(k in section for k in REPLACED_EVAL_KEYS):
        return values
    translated, line, exact = _replaced_eval_keys(section)
    if not exact:
        raise ConfigError(line)
    warnings.warn(f"{line} (read so for this run)", FutureWarning, stacklevel=2)
    return {**values, "eval": translated}


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
