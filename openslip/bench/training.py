"""Training-step benchmarks: samples/s, step-time breakdown, peak memory, FLOPs and MFU.

What is measured and why: docs/DESIGN.md, 'Measuring performance'.

`bench_train(TrainBenchConfig(...))` builds the trainer exactly as `openslip train` does
(`openslip.train.loop.build_trainer`), from the same settings (`TrainBenchConfig.settings`: the model, the batch,
the precision, the data and its loader are `openslip train`'s keys), and times its step split into data /
forward / backward / optimizer:

- **model-only**: synthetic inputs already on the device (no data cost);
- **end-to-end** (`with_data`): batches from the real three-view pipeline (demo world or a data spec),
  augmented in loader workers (`augment="cpu"`) or on the device (`augment="device"`);
- **baseline** (`baseline`): the 2021 way (`openslip.bench.baseline`) on the same weights: interleaved
  step by step with the candidate in the model-only phase; in the end-to-end phase the two run as
  consecutive blocks, because the idle path's loader workers would otherwise steal the cores.

With `rounds` > 1 the model-only and end-to-end phases alternate that many times; the end-to-end / model-only
ratio is then the median of the rounds' ratios.

MFU = analytic model FLOPs per second (`openslip.models.flops`) / a matmul peak measured in the same run, in
the same precision, with the kernel the model's layers use (`F.linear`), before and after the steps
(the larger is used). Times are wall-clock medians over the measured steps, except the end-to-end step time and
samples/s: samples over the total time of the measured steps, so that the steps that wait for data count.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from openslip.bench.baseline import PILSLIPTransform, reference_forward, reference_optimizer
from openslip.bench.reference import ReferenceStepper, checkout_info
from openslip.data.augment.params import LOCAL, local_crop_size
from openslip.data.loader import build_train_loader
from openslip.distributed import DistInfo
from openslip.errors import ConfigError
from openslip.models.flops import slip_sample_flops
from openslip.models.slip import trim_tokens
from openslip.overrides import deep_merge
from openslip.step import AMP_DTYPES, PRECISION_DTYPES, PhaseClock, timed_step
from openslip.tokenizer import get_tokenizer
from openslip.train.config import Config
from openslip.train.data import open_train_source
from openslip.train.loop import build_trainer, optimise
from openslip.train.perf import fast_bf16_available, tune_cpu_runtime
from openslip.train.recipes import make_config

PHASES = ("data", "forward", "backward", "optimizer")
# The end-to-end data phase in its parts (ms per step): waiting for the loader workers to finish the batch, its
# hand-off to the training process (queue, unpickling, pinning, bookkeeping), the host-to-device copy, and the
# decode (data.decode=device) and augmentation (data.augment=device) where the step runs.
DATA_PARTS = ("workers", "handoff", "copy", "decode_augment")
DTYPES = {name: PRECISION_DTYPES[name] for name in ("fp32", *AMP_DTYPES)}  # fp64 is a numerics mode, not timed
EOT, SOT = 49407, 49406


# The training settings the benchmark sets itself: it runs in a temporary directory, for as many steps as it times.
PINNED = {
    "out_dir": "the benchmark trains in a temporary directory",
    "train.steps": "the benchmark runs --warmup + --steps steps (give those)",
    "train.progress": "the benchmark prints no progress bar",
}


@dataclass(kw_only=True)
class TrainBenchConfig:
    # the training settings, as `openslip train` takes them (parse_overrides: {"train": {"batch_size": 16}}) on its
    # recipe (demo: slip_vit_tiny, batch 64, fp32, two loader workers); `model`, `seed`, `train.batch_size` (per
    # step, one process), `train.precision`, `train.compile`, `train.threads`, `data.*` (with `with_data`) ...
    settings: dict[str, Any] = field(default_factory=dict)
    steps: int = 5  # measured steps per path
    rounds: int = 1  # with `with_data`: the model-only and end-to-end phases, alternated this many times
    warmup: int = 2  # untimed steps first (allocator, autotuning, compilation)
    with_data: bool = False  # also time end-to-end steps with the real data pipeline (`data.train`, the demo world)
    baseline: bool = False  # also time the 2021 implementation on the same weights
    compare_reference: str | None = None  # a checkout of the original SLIP code: time it too (reference.py)
    reference_model: str | None = None  # its constructor name; None: from `model` (slip_vit_s16 -> SLIP_VITS16)
    text_len: int | None = None  # tokens per synthetic caption (SOT..EOT); None: the full context
    device: str = "auto"  # auto | cpu | cuda[:N]
    memory_sweep: bool = False  # peak memory at `sweep_batches`, with and without checkpointing
    sweep_batches: tuple[int, ...] = (64, 128, 256)
    profile: int = 0  # > 0: profile one extra candidate step and report its top ops by self time
    peak_budget_s: float = 2.0  # seconds spent measuring the matmul peak (twice: before and after the steps)
    tune: bool = True  # apply `openslip.train.perf.tune_cpu_runtime` (False: measure without it)

    def __post_init__(self) -> None:
        for key in ("steps", "rounds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1")
        if self.warmup < 0:
            raise ConfigError("--warmup must be >= 0")
        if self.rounds > 1 and not self.with_data:
            raise ConfigError(
                "--rounds alternates the model-only and end-to-end phases, so it needs --with-data (the model-only "
                "paths are already interleaved step by step)"
            )
        train_config(self, "bench")  # a mistake in the settings fails here, in one line


# --- measuring ------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux >= 4.0: "5" resets the resident high-water mark (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max_memory_allocated since the last reset. CPU: peak resident set size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; never reset


def measure_matmul_peak(device: torch.device, precision: str, *, budget_s: float = 2.0) -> dict[str, float]:
    """The best matmul throughput (FLOP/s) of `F.linear` in `precision` on `device`, measured now.

    Square products of growing size (512 up to 4096 on CPU, 8192 on CUDA) until one call takes longer
    than budget/10; each size is timed a few times and its median kept; the best size wins."""
    dtype = DTYPES[precision]
    top = 8192 if device.type == "cuda" else 4096
    best, best_n, n = 0.0, 0, 512
    deadline = time.perf_counter() + budget_s
    while n <= top:
        x = torch.randn(n, n, device=device, dtype=dtype)
        w = torch.randn(n, n, device=device, dtype=dtype)
        F.linear(x, w)  # warm-up (kernel choice, page faults)
        _sync(device)
        times = []
        for _ in range(3 if device.type == "cpu" else 10):
            t0 = time.perf_counter()
            F.linear(x, w)
            _sync(device)
            times.append(time.perf_counter() - t0)
        rate = 2 * n**3 / statistics.median(times)
        if rate > best:
            best, best_n = rate, n
        if min(times) > budget_s / 10 or time.perf_counter() > deadline:
            break
        n *= 2
    return {"flops_per_s": best, "n": best_n}


# --- the steps ----------------------------------------------------------------------------------------


@dataclass
class PathStats:
    """Per-step times of one path (one entry per measured step)."""

    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    steps: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)  # model FLOPs of each step
    faults: list[float] = field(default_factory=list)  # minor page faults of each step (whole process)
    sys_s: list[float] = field(default_factory=list)  # kernel CPU time of each step (page faults show here)
    loader_cpu_s: list[float] = field(default_factory=list)  # end to end: CPU time the loader spent on each batch
    # end to end: seconds of each DATA_PARTS per step; the CPU seconds of each batch's collation (in the workers) and
    # of its decode in the training process (data.decode=device)
    data_parts: dict[str, list[float]] = field(default_factory=dict)
    collate_cpu_s: list[float] = field(default_factory=list)
    decode_cpu_s: list[float] = field(default_factory=list)
    fallback: dict[str, int] = field(default_factory=dict)  # data.decode=device: images the workers decoded, by why
    peak_mb: float = 0.0

    def add(self, times: dict[str, float], flops: float) -> None:
        for p in PHASES:
            self.phases[p].append(times[p])
        self.steps.append(sum(v for k, v in times.items() if k in PHASES))
        self.flops.append(flops)
        self.faults.append(times["minor_faults"])
        self.sys_s.append(times["sys_s"])

    def extend(self, other: PathStats) -> None:
        """Append the steps of another phase of the same path (a later round)."""
        for p in PHASES:
            self.phases[p] += other.phases[p]
        for name in ("steps", "flops", "faults", "sys_s", "loader_cpu_s", "collate_cpu_s", "decode_cpu_s"):
            getattr(self, name).extend(getattr(other, name))
        for part, values in other.data_parts.items():
            self.data_parts.setdefault(part, []).extend(values)
        self.fallback = dict(other.fallback) or self.fallback  # a running count: the latest phase's
        self.peak_mb = max(self.peak_mb, other.peak_mb)

    def summary(self, batch_size: int, peak_flops: float, *, stalls_count: bool = False) -> dict[str, Any]:
        """Medians over the measured steps, robust to a step slowed by another process; with ``stalls_count``
        (end-to-end phases) the step time and samples/s are the mean, i.e. samples over the total time, because
        the occasional step that waits for data is what an end-to-end figure is for and a median hides it."""
        if stalls_count:
            typical = statistics.fmean
            achieved = sum(self.flops) / sum(self.steps)
        else:
            typical = statistics.median
            achieved = statistics.median(f / s for f, s in zip(self.flops, self.steps, strict=True))
        step = typical(self.steps)
        return {
            "samples_per_s": batch_size / step,
            "step_s": step,
            "step_s_median": statistics.median(self.steps),
            "step_s_mean": statistics.fmean(self.steps),
            "breakdown_s": {p: typical(v) for p, v in self.phases.items()},
            "steps_s": self.steps,
            "flops_per_step": statistics.median(self.flops),
            "achieved_flops_per_s": achieved,
            "mfu": achieved / peak_flops if peak_flops > 0 else float("nan"),
            "peak_memory_mb": self.peak_mb,
            "minor_page_faults_per_step": statistics.median(self.faults),
            "sys_cpu_s_per_step": statistics.median(self.sys_s),
            **({"loader_cpu_s_per_batch": statistics.fmean(self.loader_cpu_s)} if self.loader_cpu_s else {}),
            **self._data_summary(),
        }

    def _data_summary(self) -> dict[str, Any]:
        """The end-to-end data phase's parts, means over the steps (a stall is what they are for)."""
        if not self.data_parts:
            return {}
        out: dict[str, Any] = {
            "data_parts_ms_per_step": {p: 1e3 * statistics.fmean(self.data_parts[p]) for p in DATA_PARTS}
        }
        out["collate_cpu_s_per_batch"] = statistics.fmean(self.collate_cpu_s)
        if self.decode_cpu_s:
            out["batch_decode_cpu_s_per_batch"] = statistics.fmean(self.decode_cpu_s)
            out["fallback"] = dict(self.fallback)
        return out


def local_crop_args(trainer: Any, image_size: int) -> dict[str, int]:
    """The local crops a step of `trainer` feeds its model ({} without a distillation head), for the FLOP count."""
    model = trainer.model
    if not model.has_distill_head:
        return {}
    return {
        "local_crops": trainer.cfg.loss.local_crops,
        "local_size": local_crop_size(image_size, model.cfg.vision.patch_size),
    }


def synthetic_inputs(
    model: Any, batch_size: int, image_size: int, device: torch.device, text_len: int | None, local_crops: int = 0
):
    """Random views (and `local_crops` local crops with a distillation head) and captions of `text_len` tokens (SOT,
    words, EOT), already on `device`."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    views = model.cfg.image_views
    for name in (v for v in views if v != LOCAL):
        out[name] = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device)
    if LOCAL in views:
        side = local_crop_size(image_size, model.cfg.vision.patch_size)
        out[LOCAL] = torch.randn(batch_size, local_crops, 3, side, side, generator=g).to(device)
    if model.has_text:
        ctx = model.cfg.text.context_length
        n = min(text_len or ctx, ctx)
        text = torch.zeros(batch_size, ctx, dtype=torch.long)
        text[:, 0] = SOT
        text[:, 1 : n - 1] = torch.randint(1000, 40000, (batch_size, max(n - 2, 0)), generator=g)
        text[:, n - 1] = EOT
        out["text"] = trim_tokens(text).to(device)  # [B, n], as the training loader's tokenizer trims them
    return out


class Stepper:
    """Runs timed training steps of one path on a built `Trainer`, through `train.optimise`: the step that
    `openslip train` runs, timed phase by phase (`step.PhaseClock`).

    The baseline path runs the same step on a copy of the trainer whose forward pass and optimizer are the
    2021 way (`bench/baseline.py`); schedule, precision, loss scaler and clipping stay the candidate's."""

    def __init__(self, trainer: Any, *, baseline: bool, batch_size: int, image_size: int) -> None:
        self.baseline = baseline
        self.label = "baseline" if baseline else "candidate"
        self.device = trainer.dist.device
        self.flops_cfg = dict(batch_size=batch_size, image_size=image_size, **local_crop_args(trainer, image_size))
        self.t = trainer
        if baseline:
            o = trainer.cfg.optim
            optimizer = reference_optimizer(trainer.model, o.lr, o.wd, o.betas, o.eps)
            # Same precision for both: a baseline in another precision would measure the precision, not the
            # implementation (the reference trained under fp16 autocast on GPUs).
            self.t = replace(
                trainer,
                wrapped=partial(reference_forward, trainer.model),
                opt=replace(trainer.opt, optimizer=optimizer),
            )

    def step_flops(self, inputs: dict[str, torch.Tensor]) -> float:
        model = self.t.model
        text_len = None
        if "text" in inputs:  # trimmed on the host (trim_tokens); the 2021 way pads it back to the whole context
            text_len = model.cfg.text.context_length if self.baseline else inputs["text"].shape[1]
        drop = 0.0 if self.baseline else self.t.cfg.train.patch_dropout  # the 2021 way runs every patch
        f = slip_sample_flops(model.cfg, text_len=text_len, patch_dropout=drop, **self.flops_cfg)
        return float(f.train * self.flops_cfg["batch_size"])

    def step(self, get_inputs: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, float], float]:
        """One training step; returns (seconds per phase, plus page faults and system time; model FLOPs)."""
        times, inputs = timed_step(self.device, get_inputs, lambda inputs, clock: optimise(self.t, inputs, clock))
        return times, self.step_flops(inputs)


# --- the benchmark ------------------------------------------------------------------------------------


def train_config(bc: TrainBenchConfig, out_dir: str) -> Config:
    """The training config of the benchmarked trainer: `bc.settings` on their recipe, as `openslip train` builds it,
    with the steps, progress and run directory the benchmark needs (a setting of those is refused: PINNED)."""
    given = set(_given_keys(bc.settings))
    for key, why in PINNED.items():
        if key in given:
            raise ConfigError(f"{key} is not a setting of bench train: {why}")
    fixed = {"out_dir": out_dir, "train": {"steps": 10**9, "progress": False}}
    # the learning rate at its peak from the first step (a warm-up's tiny rates would time the same kernels anyway)
    cfg = make_config(deep_merge(deep_merge({"optim": {"warmup_steps": 0}}, bc.settings), fixed))
    if cfg.train.precision not in DTYPES:
        raise ConfigError(f"train.precision={cfg.train.precision}: bench train times {', '.join(DTYPES)}")
    return cfg


def _given_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a settings tree: {"train": {"steps": 5}} -> ["train.steps"]."""
    out = []
    for key, value in values.items():
        out += _given_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return out


# CPU features that decide which matmul kernels exist (bf16 is emulated, and slow, without avx512_bf16 or AMX).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), info["cpu"])
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
        info["isa"] = [name for name in ISA_FLAGS if name in flags]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if device.type == "cpu":
        info["fast_bf16"] = fast_bf16_available(device)
    return info


def _run_phase(steppers: list[Stepper], inputs_fns: list[Callable[[], dict]], bc: TrainBenchConfig) -> list[PathStats]:
    """warmup + steps, the paths interleaved step by step; peak memory per path over its measured steps."""
    stats = [PathStats() for _ in steppers]
    for i in range(bc.warmup + bc.steps):
        for s, fn, st in zip(steppers, inputs_fns, stats, strict=True):
            _reset_peak_memory(s.device)
            times, flops = s.step(fn)
            if i >= bc.warmup:
                st.add(times, flops)
                st.peak_mb = max(st.peak_mb, peak_memory_mb(s.device))
    return stats


def _measure_rounds(
    trainer: Any, steppers: list, synth: dict[str, torch.Tensor], bc: TrainBenchConfig, image_size: int
) -> tuple[list[PathStats], list[PathStats], list[float]]:
    """``bc.rounds`` x (the model-only phase, then the end-to-end phase with ``with_data``). Returns the steps of all
    rounds per path and the end-to-end / model-only ratio of each round. The speed of a shared or virtual machine
    drifts by ±10 % over a minute; the two phases of one round see nearly the same machine, so the median of the
    rounds' ratios is steadier than the ratio of one long pair of phases."""
    model_only: list[PathStats] = [PathStats() for _ in steppers]
    e2e: list[PathStats] = []
    ratios: list[float] = []
    for _ in range(bc.rounds):
        this_round = _run_phase(steppers, [lambda: synth] * len(steppers), bc)
        for total, part in zip(model_only, this_round, strict=True):
            total.extend(part)
        if not bc.with_data:
            continue
        data_round = _end_to_end_phase(trainer, steppers, bc, image_size)
        e2e = e2e or [PathStats() for _ in data_round]
        for total, part in zip(e2e, data_round, strict=True):
            total.extend(part)
        batch = trainer.cfg.train.batch_size
        e2e_rate = data_round[0].summary(batch, 0.0, stalls_count=True)["samples_per_s"]
        ratios.append(e2e_rate / this_round[0].summary(batch, 0.0)["samples_per_s"])
    return model_only, e2e, ratios


def _data_inputs(
    loader: Any, transform_views: Callable, device: torch.device, decoder: Any = None
) -> Callable[[], dict]:
    """Model inputs of the loader's next batch on each call; `get.record` holds, per batch, the loader's CPU time, its
    collation's, the batch decoder's and the data phase's parts (DATA_PARTS, the device synchronised at each)."""
    batches = iter(loader.forever())
    counter = {"step": 0}
    record: dict[str, list[float]] = {"cpu_s": [], "collate_s": [], "decode_s": [], **{p: [] for p in DATA_PARTS}}

    def get() -> dict:
        before = (loader.cpu_s, loader.collate_s, loader.wait_s, loader.handoff_s)
        decode_before = decoder.cpu_s if decoder is not None else 0.0
        batch = next(batches)
        clock = PhaseClock(device)  # laps "copy" and "decode_augment" in the views
        counter["step"] += 1
        inputs = transform_views(batch, counter["step"], clock)
        after = (loader.cpu_s, loader.collate_s, loader.wait_s, loader.handoff_s)
        for key, a, b in zip(("cpu_s", "collate_s", "workers", "handoff"), after, before, strict=True):
            record[key].append(a - b)
        for part in ("copy", "decode_augment"):
            record[part].append(clock.times.get(part, 0.0))
        if decoder is not None:
            record["decode_s"].append(decoder.cpu_s - decode_before)
        return inputs

    get.record = record  # type: ignore[attr-defined]
    get.close = lambda: getattr(batches, "close", lambda: None)()  # type: ignore[attr-defined]
    return get


def _captions_of_data(trainer: Any, bc: TrainBenchConfig, image_size: int) -> torch.Tensor:
    """One batch of real tokenized captions from the data (read in this process, no views rendered), so the
    model-only phase runs the same text lengths as the end-to-end phase and their ratio isolates the data cost."""
    cfg = trainer.cfg
    source = open_train_source(cfg, image_size)
    loader = build_train_loader(
        source,
        _no_views,
        get_tokenizer(),
        batch_size=cfg.train.batch_size,
        num_workers=0,
        seed=cfg.seed + 1,
        max_skip_rate=cfg.data.max_skip_rate,
    )
    return next(iter(loader))["text"]


def _no_views(image: Any) -> torch.Tensor:
    return torch.zeros(1)


# What the baseline's PIL loader yields that its step reads (the batch also carries ids and skip counts).
BASELINE_INPUTS = ("image", "view1", "view2", "text")


def _baseline_loader(trainer: Any, bc: TrainBenchConfig, image_size: int) -> Any:
    cfg = trainer.cfg
    source = open_train_source(cfg, image_size)
    return build_train_loader(
        source,
        PILSLIPTransform(image_size),
        get_tokenizer(),
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        max_skip_rate=cfg.data.max_skip_rate,
    )


def profile_step(stepper: Stepper, get_inputs: Callable[[], dict], top: int) -> list[dict[str, Any]]:
    """The `top` operators of one candidate step by self time (torch.profiler), with their share of it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if stepper.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        stepper.step(get_inputs)
    attr = "self_device_time_total" if stepper.device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [
        {"op": e.key, "self_s": getattr(e, attr) / 1e6, "share": getattr(e, attr) / total, "calls": e.count}
        for e in events[:top]
    ]


def memory_sweep(trainer: Any, bc: TrainBenchConfig, image_size: int) -> list[dict[str, Any]]:
    """Peak memory and step time of the candidate at each sweep batch size, with and without checkpointing."""
    rows = []
    model = trainer.model
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        for b in bc.sweep_batches:
            stepper = Stepper(trainer, baseline=False, batch_size=b, image_size=image_size)
            row: dict[str, Any] = {"batch_size": b, "grad_checkpointing": ckpt}
            try:
                inputs = synthetic_inputs(
                    model, b, image_size, stepper.device, bc.text_len, trainer.cfg.loss.local_crops
                )
                stepper.step(lambda inputs=inputs: inputs)  # warm-up
                _reset_peak_memory(stepper.device)
                times, _ = stepper.step(lambda inputs=inputs: inputs)
                step_s = sum(times[p] for p in PHASES)
                row.update(peak_memory_mb=peak_memory_mb(stepper.device), step_s=step_s, samples_per_s=b / step_s)
            except torch.OutOfMemoryError:
                row.update(peak_memory_mb=None, error="out of memory")
            finally:
                trainer.opt.optimizer.zero_grad(set_to_none=True)
                inputs = None
                if stepper.device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
    model.set_grad_checkpointing(trainer.cfg.train.grad_checkpointing)
    return rows


def bench_train(bc: TrainBenchConfig) -> dict[str, Any]:
    """Run the training benchmark; returns the JSON-able result (`openslip bench train` prints it as a table).

    The thread count and `OPENSLIP_NO_TUNE` are restored afterwards (the malloc settings stay)."""
    threads, no_tune = torch.get_num_threads(), os.environ.get("OPENSLIP_NO_TUNE")
    try:
        return _bench_train(bc)
    finally:
        torch.set_num_threads(threads)
        if no_tune is None:
            os.environ.pop("OPENSLIP_NO_TUNE", None)
        else:
            os.environ["OPENSLIP_NO_TUNE"] = no_tune


def _end_to_end_phase(trainer: Any, steppers: list, bc: TrainBenchConfig, image_size: int) -> list[PathStats]:
    """Steps with the real data pipeline, one block per path (the idle path's loader workers would steal the
    cores): openslip's loader and views, the baseline's PIL loader; the reference checkout is model-only."""
    device, data = trainer.dist.device, trainer.data
    stats: list[PathStats] = []
    for s in steppers:
        if s.label == "reference":
            continue  # the checkout's data loader is not timed
        if s.baseline:
            loader = _baseline_loader(trainer, bc, image_size)

            def views(batch: dict, step: int, clock: PhaseClock) -> dict:
                out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in BASELINE_INPUTS}
                clock.lap("copy")
                return out
        else:
            loader = data.loader

            def views(batch: dict, step: int, clock: PhaseClock) -> dict:
                return data.views(batch, step, device, clock)

        decoder = data.decoder if not s.baseline and data.decoder is not None and data.decoder.jpegs else None
        get = _data_inputs(loader, views, device, decoder)
        stats += _run_phase([s], [get], bc)
        record = {k: v[bc.warmup :] for k, v in get.record.items()}  # type: ignore[attr-defined]
        st = stats[-1]
        st.loader_cpu_s, st.collate_cpu_s = record["cpu_s"], record["collate_s"]
        st.data_parts = {p: record[p] for p in DATA_PARTS}
        if decoder is not None:
            st.decode_cpu_s, st.fallback = record["decode_s"], dict(loader.skips.fallback)
        get.close()  # type: ignore[attr-defined]
    return stats


def loader_share(result: dict[str, Any]) -> dict[str, float]:
    """On a CPU the loader workers and the model's threads share the cores: the loader's CPU time per batch as a
    fraction of the model-only step's CPU time (step time x threads), and the end-to-end / model-only ratio that
    leaves when the step keeps every core busy, 1 / (1 + share). Gaps in the step (Python between kernels) can
    hide some loader work, so a measured ratio may come out a little above it."""
    step_cpu_s = result["model_only"]["step_s"] * result["machine"]["threads"]
    share = result["end_to_end"]["loader_cpu_s_per_batch"] / step_cpu_s
    return {"step_cpu_s": step_cpu_s, "share": share, "expected_ratio": 1.0 / (1.0 + share)}


def _add_comparisons(
    result: dict[str, Any],
    bc: TrainBenchConfig,
    cfg: Config,
    by_label: dict[str, PathStats],
    e2e: list[PathStats],
    ratios: list[float],
    peak: float,
    reference_name: str | None,
) -> None:
    """The end-to-end figures and those of the other paths (baseline, reference checkout), each with its ratio to
    openslip's."""
    batch = cfg.train.batch_size
    if bc.with_data:
        result["end_to_end"] = e2e[0].summary(batch, peak, stalls_count=True)
        result["end_to_end"]["ratio_by_round"] = ratios
        result["end_to_end"]["ratio_to_model_only"] = statistics.median(ratios)
        if result["machine"]["device"] == "cpu" and cfg.data.augment == "cpu":  # (device: views made in the step)
            result["end_to_end"]["loader_share"] = loader_share(result)
    if bc.compare_reference:
        result["reference"] = {
            "checkout": bc.compare_reference,
            **checkout_info(bc.compare_reference),
            "model": reference_name,
            "model_only": by_label["reference"].summary(batch, peak),
        }
        result["speedup_vs_reference"] = {
            "model_only": result["model_only"]["samples_per_s"] / result["reference"]["model_only"]["samples_per_s"]
        }
        result["speedup_ceiling_vs_reference"] = speedup_ceiling(
            result["model_only"], result["reference"]["model_only"], peak
        )
    if bc.baseline:
        result["baseline"] = {"model_only": by_label["baseline"].summary(batch, peak)}
        result["speedup_vs_baseline"] = {
            "model_only": result["model_only"]["samples_per_s"] / result["baseline"]["model_only"]["samples_per_s"]
        }
        result["speedup_ceiling_vs_baseline"] = speedup_ceiling(
            result["model_only"], result["baseline"]["model_only"], peak
        )
        if bc.with_data:
            result["baseline"]["end_to_end"] = e2e[1].summary(batch, peak, stalls_count=True)
            result["speedup_vs_baseline"]["end_to_end"] = (
                result["end_to_end"]["samples_per_s"] / result["baseline"]["end_to_end"]["samples_per_s"]
            )


def speedup_ceiling(own: dict[str, Any], other: dict[str, Any], peak: float) -> float:
    """The speed-up over ``other`` that openslip's step would show if it ran its FLOPs at the full measured matmul
    peak: ``other``'s step time over ``flops_per_step / peak``. No implementation of the same FLOPs beats ``other``
    by more, so a target ratio above this cannot be met on this machine (e.g. 1.5x when the reference already
    runs at 56 % of the peak needs 84 %)."""
    return other["step_s"] * peak / own["flops_per_step"] if peak > 0 else float("nan")


def _bench_train(bc: TrainBenchConfig) -> dict[str, Any]:
    device = resolve_device(bc.device)
    with tempfile.TemporaryDirectory(prefix="openslip-bench-") as out_dir:
        cfg = train_config(bc, out_dir)
        threads, precision = cfg.train.threads or None, cfg.train.precision  # 0 / None: torch's default
        tuning = tune_cpu_runtime(threads=threads).as_dict() if bc.tune else {"skipped": "--no-tune"}
        if threads and not bc.tune:
            torch.set_num_threads(threads)
        if not bc.tune:
            os.environ["OPENSLIP_NO_TUNE"] = "1"  # so that a trainer calling tune_cpu_runtime() skips it too
        load_before = os.getloadavg()
        torch.manual_seed(cfg.seed)
        trainer = build_trainer(cfg, DistInfo(0, 1, 0, device, True))
        image_size = trainer.model.cfg.vision.image_size
        B = cfg.train.batch_size
        peak0 = measure_matmul_peak(device, precision, budget_s=bc.peak_budget_s)
        candidate = Stepper(trainer, baseline=False, batch_size=B, image_size=image_size)
        steppers = [candidate]
        if bc.baseline:
            steppers.append(Stepper(trainer, baseline=True, batch_size=B, image_size=image_size))
        reference_name = None  # the checkout's constructor, with --compare-reference
        if bc.compare_reference:
            reference = ReferenceStepper(
                bc.compare_reference, trainer, name=bc.reference_model, batch_size=B, image_size=image_size
            )
            steppers.append(reference)
            reference_name = reference.name
        synth = synthetic_inputs(trainer.model, B, image_size, device, bc.text_len, cfg.loss.local_crops)
        if bc.with_data and "text" in synth:
            synth["text"] = trim_tokens(_captions_of_data(trainer, bc, image_size)).to(device)
        model_only, e2e, ratios = _measure_rounds(trainer, steppers, synth, bc, image_size)
        by_label = dict(zip([s.label for s in steppers], model_only, strict=True))
        profile_rows = profile_step(candidate, lambda: synth, bc.profile) if bc.profile > 0 else None
        peak1 = measure_matmul_peak(device, precision, budget_s=bc.peak_budget_s)
        peak = max(peak0["flops_per_s"], peak1["flops_per_s"])
        if bc.memory_sweep:
            del steppers[1:]  # the baseline's optimizer state would count in the candidate's memory
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        sweep = memory_sweep(trainer, bc, image_size) if bc.memory_sweep else None
    text_len = synth["text"].shape[1] if "text" in synth else None  # trimmed on the host
    flops = slip_sample_flops(
        trainer.model.cfg,
        batch_size=B,
        image_size=image_size,
        text_len=text_len,
        **local_crop_args(trainer, image_size),
    )
    result: dict[str, Any] = {
        "config": _config_record(bc, cfg),
        "machine": _machine(device),
        "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
        "runtime_tuning": tuning,
        "image_size": image_size,
        "text_len": text_len,  # tokens the text tower runs on in the model-only phase (SOT..last EOT)
        "matmul_peak_flops_per_s": peak,
        "matmul_peak_runs": [peak0, peak1],
        "flops_per_sample": flops.as_dict(),
        "model_only": model_only[0].summary(B, peak),
    }
    _add_comparisons(result, bc, cfg, by_label, e2e, ratios, peak, reference_name)
    if sweep is not None:
        result["memory_sweep"] = sweep
    if profile_rows is not None:
        result["profile"] = profile_rows
    result["samples_per_s"] = result["model_only"]["samples_per_s"]
    result["mfu"] = result["model_only"]["mfu"]
    return result


def _config_record(bc: TrainBenchConfig, cfg: Config) -> dict[str, Any]:
    """The result's `config`: the benchmark's own settings, the training settings given, and the resolved values
    the table and the comparisons read (model, batch, precision, the data path's settings)."""
    own = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(bc).items()}
    t, d = cfg.train, cfg.data
    resolved = {
        "model": cfg.model,
        "seed": cfg.seed,
        "batch_size": t.batch_size,
        "precision": t.precision,
        "compile": t.compile,
        "grad_checkpointing": t.grad_checkpointing,
        "patch_dropout": t.patch_dropout,
        "threads": t.threads,
        "image_size": d.image_size,
        "data": d.train,
        "num_workers": d.num_workers,
        "worker_priority": d.worker_priority,
        "augment": d.augment,
        "decode": d.decode,
    }
    return {**resolved, **own}
