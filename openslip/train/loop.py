"""The training loop as plain functions: `train(cfg)` = setup, then `train_step` until `train.steps`.

One code path from one CPU process to torchrun on many GPU nodes: `init_distributed` reads the torchrun
environment (one plain process without it), DDP wraps the model when there are several ranks, and the
contrastive losses gather features over the global batch with gradient (docs/DESIGN.md, 'Gathering with gradient').
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openslip.data.augment.params import local_crop_size
from openslip.data.workers import describe_worker_death
from openslip.distributed import (
    CollectiveError,
    DistInfo,
    all_reduce_max,
    all_reduce_mean,
    average_gradients,
    broadcast_object,
    init_distributed,
    is_peer_failure,
)
from openslip.distributed_batchnorm import convert_global_batchnorm
from openslip.errors import CheckpointError, RunStopped, TrainingError
from openslip.interop.init_from import adopt_layout, init_weights_from, resume_or_source
from openslip.losses import SLIPLoss
from openslip.models import SLIP, create_model, model_config, with_distill_head
from openslip.optim import clamp_logit_scale
from openslip.step import NO_CLOCK, OptimStep, check_finite, check_finite_weights, param_dtype
from openslip.train import best as best_ckpt
from openslip.train import parallel
from openslip.train.accumulate import accumulated_backward
from openslip.train.ahead import prepared_ahead
from openslip.train.checks import check_config
from openslip.train.compiling import GRAPH_MODES, compile_model, keep_compiled_kernels, new_graph_step, use_compile
from openslip.train.config import Config, TrainConfig
from openslip.train.data import TrainData, build_train_data
from openslip.train.evals import TrainingEvals, build_evals, check_eval_sets, skip_lines
from openslip.train.evals import evaluate as evaluate_sets
from openslip.train.optimizer import build_optimizer, lr_at
from openslip.train.perf import available_cores, fast_bf16_available, tune_cpu_runtime
from openslip.train.run_log import RunLogger
from openslip.train.rundir import prepare_run_dir, release_run_dir, resume_checkpoint, write_run_config
from openslip.train.state import rng_state, set_rng_state
from openslip.train.teacher import EMATeacher, collapse_warnings
from openslip.weights import checkpoint as ckpt


@dataclass
class StopRequest:
    """What SIGTERM / SIGINT asked of a run (see `_stop_on_signals`)."""

    signum: int = 0  # the first signal: the loop stops after the current step, with a checkpoint
    last_at: float = -1e9  # when the last one came (time.monotonic)
    final: bool = False  # the run is past its last checkpoint: further signals change nothing


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGTERM / SIGINT: the run ends where it is, without a final checkpoint. A KeyboardInterrupt, so
    that no `except Exception` on the way swallows it; the CLI prints the message and exits `exit_code`."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"stopped at once by a second {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


@dataclass
class Trainer:
    """The state of a run: what `train_step` reads and updates."""

    cfg: Config
    dist: DistInfo
    model: SLIP  # the bare module (checkpoints, evaluation, exact accumulation)
    wrapped: nn.Module  # what the plain step calls: DDP(model), torch.compile(model) or the model itself
    loss_fn: SLIPLoss
    opt: OptimStep  # AdamW with the warm-up + cosine schedule, precision, loss scaler and clipping
    data: TrainData
    run_dir: Path
    evals: TrainingEvals  # eval.sets, their options and chance scores (openslip.train.evals)
    step: int = 0
    last_checkpoint: Path | None = None
    history: dict[str, float] = field(default_factory=dict)
    stop: StopRequest = field(default_factory=StopRequest)  # set by the SIGTERM / SIGINT handler
    init_report: list[str] = field(default_factory=list)  # what init_from loaded and what kept its initialisation
    best: best_ckpt.Best | None = (
        None  # the evaluation that scored best on eval.best_metric so far (openslip.train.best)
    )
    teacher: EMATeacher | None = None  # loss.ssl=distill: the EMA teacher and its centre (openslip.train.teacher)
    warned: set[str] = field(default_factory=set)  # the collapse warnings given so far (one line each per run)


def logs_at(cfg: TrainConfig, step: int) -> bool:
    """Whether the run writes the metrics of ``step`` (every ``train.log_every`` steps, and the last)."""
    return step % cfg.log_every == 0 or step == cfg.steps


def train_step(t: Trainer, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One optimizer step on one global batch; returns the loss terms and the gradient norm (detached)."""
    inputs = t.data.views(batch, t.step, t.dist.device)
    losses = optimise(t, inputs, samples=lambda: t.data.loader.describe_ids(batch["id"]))
    if logs_at(t.cfg.train, t.step):
        # a learning rate far too large overflows the weights while the loss that led there was finite; checked at
        # the steps that log (and before every save), not at every step, to keep the check's cost out of the step
        check_weights(t)
    return losses


def _last_good(t: Trainer) -> str:
    return f"the last good checkpoint is {t.last_checkpoint}" if t.last_checkpoint else "no checkpoint was saved yet"


def check_weights(t: Trainer) -> None:
    """Stop the run with one line (on every rank) when a weight is inf / NaN."""
    check_finite_weights(t.model, what="training", step=t.step, detail=lambda: f"; {_last_good(t)}")


def optimise(
    t: Trainer, inputs: dict[str, torch.Tensor], clock: Any = NO_CLOCK, samples: Callable[[], list[str]] = list
) -> dict[str, torch.Tensor]:
    """The step once the views are made: forward, finite check, backward, update. `openslip bench train` times it
    phase by phase with a `step.PhaseClock`; training passes none (no device synchronisation)."""
    cfg = t.cfg.train
    t.opt.set_lr(t.step)
    # RankMe's SVD only for a step whose metrics are written: on a GPU it costs milliseconds and waits for the device
    t.loss_fn.track_rank = logs_at(cfg, t.step + 1)

    def detail() -> str:
        ids = samples()
        shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} samples)" if len(ids) > 8 else "")
        return f" (samples: {shown}); {_last_good(t)}" if ids else f"; {_last_good(t)}"

    # the teacher's targets of the whole batch (no gradient), handed to the loss beside the student's outputs
    targets = t.teacher.targets(inputs, t.opt.autocast) if t.teacher is not None else {}

    def loss_fn(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return t.loss_fn({**outputs, **targets})

    if cfg.accum_steps == 1:
        if cfg.compile_mode in GRAPH_MODES:
            new_graph_step()
        with t.opt.autocast():
            losses = loss_fn(t.wrapped(**inputs))
        clock.lap("forward")
        check_finite(losses["loss"], what="training", step=t.step, detail=detail)
        t.opt.backward(losses["loss"])
        parallel.average_whole_gradients(t.model)  # FSDP: the scalars it keeps whole (nothing otherwise)
    else:  # exact over the whole batch (see accumulate.py); DDP is bypassed, so average by hand
        losses = accumulated_backward(
            t.model, inputs, loss_fn, cfg.accum_steps, autocast=t.opt.autocast, scale=t.opt.scale
        )
        clock.lap("forward")  # micro-batches interleave forward and backward: the two are timed as one here
        check_finite(losses["loss"], what="training", step=t.step, detail=detail)
        if parallel.is_sharded(t.model):  # FSDP reduced the sharded gradients in each backward pass already
            parallel.average_whole_gradients(t.model)
        else:
            average_gradients(t.model)
    clock.lap("backward")
    grad_norm = t.opt.update(t.model.parameters())  # clipped to train.grad_clip when set
    clamp_logit_scale(t.model)  # CLIP: temperature multiplier at most 100
    extra = {}
    if t.teacher is not None:  # the teacher follows the updated student (DINO Algorithm 1: after the step)
        extra["teacher_momentum"] = torch.tensor(t.teacher.update(t.model, t.step))
    clock.lap("optimizer")
    t.step += 1
    return {**{k: v.detach() for k, v in losses.items()}, "grad_norm": grad_norm, **extra}


# --- setup ------------------------------------------------------------------------------------------


def build_trainer(cfg: Config, dist: DistInfo) -> Trainer:
    threads = cfg.train.threads or None  # 0 / None: torch's default
    if dist.device.type == "cpu":
        tune_cpu_runtime(threads=threads)  # keep freed activations in the heap: ~3x less time outside matmuls
    if threads is not None and torch.get_num_threads() != threads:  # also on GPU, and with OPENSLIP_NO_TUNE set
        torch.set_num_threads(threads)
    if cfg.train.precision == "bf16" and not fast_bf16_available(dist.device):
        warnings.warn(
            f"train.precision=bf16 has no fast kernels on this {dist.device.type} (no AVX512-BF16 / AMX); "
            "fp32 is many times faster here",
            stacklevel=2,
        )
    # before seeding: the parts init_from does not cover are initialised as in a run without it
    source, layout = resume_or_source(cfg.init_from, cfg.resume, cfg.out_dir)
    torch.manual_seed(cfg.seed)
    overrides = {"head_norm": cfg.head_norm} if cfg.head_norm else {}
    if cfg.data.image_size:
        overrides["image_size"] = cfg.data.image_size
    dtype = param_dtype(cfg.train.precision)  # float64 for fp64 (numerics checks), else float32
    if cfg.loss.contrastive != "softmax":  # a softmax model's config stays as registered (and its checkpoints)
        overrides["contrastive"] = cfg.loss.contrastive
    mcfg = model_config(cfg.model, **overrides)
    if cfg.loss.ssl == "distill":  # the distillation head takes the SimCLR head's place
        mcfg = with_distill_head(mcfg)
    if layout is not None:
        mcfg = adopt_layout(mcfg, layout)
    model = create_model(mcfg)
    init_report = init_weights_from(model, source, cfg.init_from) if source is not None else []
    del source
    if dist.world_size > 1 and model.has_ssl_head:
        convert_global_batchnorm(model.image_mlp)  # the reference's SyncBatchNorm, on every backend
    model = model.to(dist.device, dtype=dtype)  # after the swap: the global BatchNorm's weights in `dtype` too
    model.set_grad_checkpointing(cfg.train.grad_checkpointing)
    model.visual.patch_dropout = cfg.train.patch_dropout  # training mode only (FLIP); evaluation sees every patch
    # DINO starts the teacher as a copy of the student (after init_from, so both start from those weights)
    teacher = EMATeacher(model, cfg.loss, cfg.train.steps) if model.has_distill_head else None
    wrapped: nn.Module = model
    if dist.world_size > 1 and cfg.train.parallel == "fsdp":
        parallel.shard(model, cfg.train.precision)  # in place: the model's weights become this rank's shards
    elif dist.world_size > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if use_compile(cfg.train.compile, dist.device):
        keep_compiled_kernels()  # a restart reuses the compiled kernels instead of compiling for minutes
        wrapped = compile_model(wrapped, cfg.train.compile_mode)
    loss_fn = SLIPLoss(
        ssl_scale=cfg.loss.ssl_scale,
        clip_scale=cfg.loss.clip_scale,
        ssl_temperature=cfg.loss.ssl_temperature,
        gather=cfg.loss.gather,
        contrastive=cfg.loss.contrastive,
        ssl=cfg.loss.ssl,
        distill_temperature=cfg.loss.distill_temperature,
        track_rank=True,  # ssl_rank in metrics.jsonl: a collapse signal (RankMe), at the steps that log (optimise)
    )
    data = build_train_data(
        cfg,
        model.cfg.vision.image_size,
        model.cfg.image_views,
        model.cfg.text is not None,
        dist.rank,
        dist.world_size,
        dist.device,
        dtype=dtype,
        local_size=local_crop_size(model.cfg.vision.image_size, model.cfg.vision.patch_size),
    )
    return Trainer(
        cfg=cfg,
        dist=dist,
        model=model,
        wrapped=wrapped,
        loss_fn=loss_fn,
        opt=OptimStep(
            build_optimizer(model, cfg.optim),
            schedule=lambda step: lr_at(step, cfg.train.steps, cfg.optim),
            device_type=dist.device.type,
            precision=cfg.train.precision,
            grad_clip=cfg.train.grad_clip,
        ),
        data=data,
        run_dir=Path(cfg.out_dir),
        evals=build_evals(cfg, dist.device),
        init_report=init_report,
        teacher=teacher,
    )


def save(t: Trainer) -> Path:
    """Checkpoint the run at the current step (rank 0 writes; every rank waits for it). Non-finite weights are never
    saved: the run stops with one line naming the last good checkpoint, which stays the newest."""
    check_weights(t)
    path = t.run_dir / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_dir_name(t.step)
    problem = None
    # FSDP: the full weights and optimizer state, gathered on every rank (collectives); the file is a DDP run's
    model = parallel.whole_copy(t.model)
    optim_state = t.opt.state_dict()
    if parallel.is_sharded(t.model):
        optim_state["optimizer"] = parallel.full_optimizer_state(t.model, t.opt.optimizer)
    if t.dist.is_main:
        state = {
            "step": t.step,
            **optim_state,  # "optimizer" and "scaler"
            "rng": rng_state(),
            "loader": t.data.loader_state(),  # before a batch prepared ahead (openslip.train.ahead)
            "best": best_ckpt.to_state(t.best, t.cfg.eval.best_mode),  # a resumed run keeps choosing as before
        }
        if t.teacher is not None:  # its weights and centre: a resumed run's targets are those of an unbroken one
            state["teacher"] = t.teacher.state_dict()
        if t.data.images is not None:  # data.train_images: where the unpaired images' loader stands
            state["images_loader"] = t.data.images.loader_state()
        try:
            ckpt.save_checkpoint(
                path, model, config_extra={"train_config": t.cfg.to_dict(), "step": t.step}, train_state=state
            )
        except OSError as err:  # disk full, quota, file-size limit, read-only remount: the staged copy is removed
            previous = (
                f"the previous checkpoint {t.last_checkpoint} is intact"
                if t.last_checkpoint
                else "no earlier checkpoint of this run exists"
            )
            problem = f"cannot write checkpoint {path} ({err.strerror or err}); {previous}"
        else:
            problem = _record_best(t, path)
            # after `best` names its checkpoint: the previous best is pruned now unless among the last kept
            ckpt.prune_checkpoints(t.run_dir, keep_last=t.cfg.ckpt.keep_last)
    # doubles as the barrier: every rank learns whether rank 0's write failed instead of waiting on it
    problem = broadcast_object(problem)
    if problem:
        raise TrainingError(problem)
    t.last_checkpoint = path
    return path


def _record_best(t: Trainer, path: Path) -> str | None:
    """Point `best` at the checkpoint just saved when it is the best (rank 0); the reason it failed, or None."""
    if t.best is None or t.best.step != t.step:
        return None
    try:
        best_ckpt.write_best(path.parent, t.best)
    except OSError as err:
        return f"cannot record the best checkpoint in {path.parent} ({err.strerror or err}); {path} is saved"
    return None


def note_best(t: Trainer, results: dict[str, float], step: int, log: RunLogger) -> bool:
    """Whether this evaluation is the best so far on eval.best_metric (then it becomes `t.best` and its step saves a
    checkpoint). Rank 0 decides and tells the others, so that every rank saves at the same steps."""
    ev = t.cfg.eval
    if not ev.best_metric:
        return False
    new = best_ckpt.improved(t.best, results, step, ev.best_metric, ev.best_mode) if t.dist.is_main else None
    new = broadcast_object(new)
    if new is None:
        return False
    previous = f" (was {t.best.value:.2f} at step {t.best.step})" if t.best else ""
    log.message(f"step {step}: best {new.metric} so far: {new.value:.2f}{previous}; checkpoints/best names this step")
    t.best = new
    return True


def evaluate(t: Trainer) -> dict[str, float]:
    """Every set of eval.sets at this step (`openslip.train.evals`); every rank takes part (FSDP: on a whole copy of
    the model, gathered by every rank)."""
    model = parallel.whole_copy(t.model) if t.cfg.eval.sets else t.model
    return evaluate_sets(t.evals, t.cfg, model)


def ignore_file_size_signal() -> None:
    """Past a file-size limit (`ulimit -f`) the kernel sends SIGXFSZ, whose default action kills the process without
    a word. CPython ignores it at start-up, but a program embedding Python or a library may restore the default;
    ignored, the write fails with EFBIG instead, and a checkpoint write that fails is one line (`save`)."""
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def resume(t: Trainer, log: RunLogger) -> None:
    """Continue from the checkpoint `cfg.resume` chooses (train/rundir.py), its settings checked: weights,
    optimizer, loader position, random streams, step and best record."""
    path = resume_checkpoint(t.cfg, t.run_dir, log.message)
    if path is None:
        return
    state = ckpt.load_train_state(path, map_location=t.dist.device, verify=False)
    sharded = parallel.is_sharded(t.model)
    if sharded:  # each rank keeps its shards of the full weights
        parallel.load_full_weights(t.model, ckpt.read_weights(path, t.dist.device))
    else:
        ckpt.load_weights(t.model, path, verify=False)  # verified just above
    if sharded or parallel.keyed_by_name(state["optimizer"]):  # a sharded run, or a checkpoint an FSDP run saved
        by_name = parallel.optimizer_state_by_name(t.model, t.opt.optimizer, state["optimizer"])
        parallel.load_full_optimizer_state(t.model, t.opt.optimizer, by_name)
        t.opt.scaler.load_state_dict(state["scaler"])
    else:
        t.opt.load_state_dict(state)
    t.data.loader.load_state_dict(state["loader"])
    if t.data.images is not None and "images_loader" in state:  # absent: images added on a forced resume
        t.data.images.loader.load_state_dict(state["images_loader"])
    if t.teacher is not None:
        if "teacher" not in state:
            raise CheckpointError(f"{path} has no EMA teacher (it was not trained with loss.ssl=distill)")
        t.teacher.load_state_dict(state["teacher"])
    set_rng_state(state["rng"])
    t.step = int(state["step"])
    t.last_checkpoint = path
    t.best = _resumed_best(t, path, state.get("best"), log)
    log.message(f"resumed from {path} at step {t.step}")


def _resumed_best(t: Trainer, path: Path, saved: Any, log: RunLogger) -> best_ckpt.Best | None:
    """The best record of the checkpoint resumed from, with `best` and best.json rewritten to match it: a run killed
    between a checkpoint and its pointer, or resumed from an older checkpoint, then points where an uninterrupted
    run would (no record: neither file, until the next evaluation). A record whose checkpoint is gone (or lies in
    another run's directory) is dropped with a warning. With eval.best_metric unset the files are left alone."""
    ev = t.cfg.eval
    found, why = best_ckpt.from_state(saved, ev.best_metric, ev.best_mode)
    root = t.run_dir / ckpt.CHECKPOINTS_DIR
    if t.dist.is_main and ev.best_metric:
        if found is not None and (
            path.parent.resolve() != root.resolve() or not best_ckpt.checkpoint_exists(root, found)
        ):
            why = f"warning: the best checkpoint ({found.describe()}) is not in {root}; the best is chosen anew"
            found = None
        if found is None:
            best_ckpt.clear_best(root)
        else:
            best_ckpt.write_best(root, found)
    if why and t.dist.is_main:
        log.message(why)
    return broadcast_object(found)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal within this many seconds of the previous one is the same request delivered twice, not a second
# request: timeout(1) signals its child and then the child's process group, microseconds apart.
REPEAT_WINDOW_S = 1.0


@contextlib.contextmanager
def _stop_on_signals(stop: StopRequest):
    """While training, SIGTERM / SIGINT ask the loop to checkpoint and stop; a second one stops at once.

    The loader's workers ignore both (data/workers.py): the whole process group can be signalled, as schedulers
    do, and this process still finishes its step, checkpoints and then ends its workers."""

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        repeated = now - stop.last_at < REPEAT_WINDOW_S
        stop.last_at = now
        if not stop.signum:
            stop.signum = signum
        elif not (stop.final or repeated):  # asked twice: do not wait for the step to end
            raise StoppedAtOnce(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread (train() called from a worker thread): no handlers to install
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _failure_line(err: Exception, dist: DistInfo, last: Path | None) -> str | None:
    """One line for how a run ends that is not a bug (None otherwise): a dead loader worker, or, with several
    ranks, any failed collective. A collective fails when a peer died (SIGKILL, a crash, the OOM killer) or stopped
    answering for `train.collective_timeout_s` (SIGSTOP, a hung filesystem), whatever this rank was doing: waiting
    for data, all-reducing gradients in DDP's backward, broadcasting a checkpoint's outcome, evaluating."""
    resume = f"resume with resume=auto from {last or 'the start'}"
    death = describe_worker_death(err)
    if death:
        return f"{f'rank {dist.rank}: ' if dist.world_size > 1 else ''}{death}; {resume}"
    if dist.world_size > 1 and is_peer_failure(err):
        return f"rank {dist.rank}: lost contact with another process ({err}); {resume}"
    return None


# --- the run ------------------------------------------------------------------------------------------


def train(cfg: Config) -> dict[str, Any]:
    """Train `cfg` to `cfg.train.steps`; returns a summary (steps, time, final metrics, paths)."""
    check_config(cfg)  # make_config has; a Config built by hand has not
    check_eval_sets(cfg)
    ignore_file_size_signal()
    try:
        dist = init_distributed(timeout_s=cfg.train.collective_timeout_s)
        run_dir, lock = prepare_run_dir(cfg, dist)
    except CollectiveError as err:  # a peer that died before training started, or never came
        raise TrainingError(
            f"rank {os.environ.get('RANK', '?')}: lost contact with another process ({err}); "
            "resume with resume=auto once every process can start"
        ) from None
    try:
        return _train_locked(cfg, dist, run_dir)
    finally:
        release_run_dir(lock)


def _train_locked(cfg: Config, dist: DistInfo, run_dir: Path) -> dict[str, Any]:
    stop = StopRequest()
    t: Trainer | None = None
    with _stop_on_signals(stop):
        try:
            t = build_trainer(cfg, dist)
            t.stop = stop
            return _run(t, run_dir)
        except StoppedAtOnce as err:
            last = t.last_checkpoint if t else None
            where = f"after step {t.step}" if t else "before training"
            raise StoppedAtOnce(
                err.signum,
                f"stopped at once by a second {signal.Signals(err.signum).name} {where}, without a final checkpoint; "
                f"resume with resume=auto from {last or 'the start'}",
            ) from None
        except Exception as err:
            line = _failure_line(err, dist, t.last_checkpoint if t else None)
            if line is None:
                raise
            raise TrainingError(line) from None
        finally:
            stop.final = True  # what follows is the way out: log, lock, message


def _run(t: Trainer, run_dir: Path) -> dict[str, Any]:
    cfg, dist = t.cfg, t.dist
    log = RunLogger(
        run_dir,
        enabled=dist.is_main,
        total_steps=cfg.train.steps,
        start_step=0,
        progress=cfg.train.progress,
        print_every=cfg.train.print_every,
        print_every_s=cfg.train.print_every_s,
        wandb={"project": cfg.train.wandb_project, "config": cfg.to_dict()} if cfg.train.wandb else None,
    )
    try:
        try:
            resume(t, log)
            log.start_at(t.step)  # one metrics record per step: drop those of steps trained again
            if t.step == 0:
                for line in t.init_report:
                    log.message(line)
        except CheckpointError as err:
            raise TrainingError(f"cannot resume: {err}") from None
        if dist.is_main:  # only now: a refused resume leaves the run's config.yaml as it was
            write_run_config(cfg, run_dir)
        if t.dist.is_main:
            log.message(
                f"training {cfg.model} ({cfg.recipe}) for {cfg.train.steps} steps, global batch "
                f"{cfg.train.batch_size}, {dist.world_size} process(es) on {dist.device.type}; "
                f"data {describe_data(cfg, t.data.loader)}; run dir {run_dir}"
            )
            for line in start_warnings(cfg, dist):
                log.message(line)
            for line in skip_lines(cfg, t.model.cfg):
                log.message(line)
        return _loop(t, log)
    finally:
        log.close()


def describe_data(cfg: Config, loader: Any) -> str:
    """`data.train` as given and its size: a wrong glob or an unquoted brace pattern shows here at once."""
    spec = cfg.data.train if isinstance(cfg.data.train, str) else ", ".join(cfg.data.train)
    if len(spec) > 120:
        spec = spec[:117] + "..."
    if loader.kind == "map":
        size = f"{len(loader.source):,} samples"
    else:
        urls = getattr(loader.source, "urls", None)
        size = f"{len(urls):,} shard(s)" if urls is not None else "size unknown"
    return f"{spec} ({size})"


def start_warnings(cfg: Config, dist: DistInfo, load: Callable[[], float] | None = None) -> list[str]:
    """One line each for settings that make a run quietly slower or different from what was asked."""
    lines = []
    if cfg.optim.warmup_steps >= cfg.train.steps:
        lines.append(
            f"warning: optim.warmup_steps={cfg.optim.warmup_steps} is not shorter than train.steps={cfg.train.steps}: "
            f"the learning rate never reaches optim.lr={cfg.optim.lr:g}; lower optim.warmup_steps"
        )
    if dist.device.type == "cpu":
        cores = available_cores()
        try:
            busy = load() if load is not None else os.getloadavg()[0]
        except OSError:  # no load average on this system
            busy = 0.0
        if busy > cores:
            threads = torch.get_num_threads()
            line = f"warning: the 1-minute load ({busy:.1f}) is above the {cores} usable core(s): other work competes "
            if threads > 1:  # several threads wait for each other's share of a busy CPU
                line += f"for the CPU; training with {threads} threads may be many times slower (try train.threads=1)"
            else:
                line += "for the CPU; this run will be slower than on a quiet machine"
            lines.append(line)
    return lines


def _loop(t: Trainer, log: RunLogger) -> dict[str, Any]:
    batches = t.data.loader.forever()
    # on CUDA the next batch is copied, decoded and augmented on a side stream while the step runs
    feed = prepared_ahead(batches, t.data, t.dist.device, t.step, t.cfg.train.steps)
    try:
        return _steps(t, log, feed)
    finally:
        feed.close()
        batches.close()  # ends the loader's workers now (they ignore SIGTERM / SIGINT): no leftover processes
        t.data.close()  # and those of the unpaired images' loader


def _steps(t: Trainer, log: RunLogger, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
    cfg = t.cfg
    start_step, start_time = t.step, time.perf_counter()
    data_wait, samples, loader_cpu, tick_step = 0.0, 0, t.data.loader.cpu_s, t.step
    reported_skips = t.data.loader.skips.total_skipped
    reported_fallback = False
    tick = time.perf_counter()
    shown: dict[str, Any] = {}  # the metrics of the last logged step, shown by the progress line
    while t.step < cfg.train.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t0
        samples += len(batch["id"])
        losses = train_step(t, batch)
        step = t.step
        if step == start_step + 1 and t.dist.world_size > 1 and t.dist.is_main:
            held = parallel.local_state_bytes(t.model, t.opt.optimizer) / 2**20
            log.message(
                f"train.parallel={cfg.train.parallel}: rank 0 holds {held:.1f} MiB of weights and AdamW state "
                f"(the whole model's: {parallel.full_state_mib(t.model):.1f} MiB)"
            )
        if logs_at(cfg.train, step):
            now = time.perf_counter()
            metrics = {k: all_reduce_mean(v).item() for k, v in losses.items()}
            metrics["lr"] = t.opt.lr
            if t.model.has_text:
                metrics["logit_scale"] = t.model.logit_scale.exp().item()
            if t.model.has_logit_bias:
                metrics["logit_bias"] = t.model.logit_bias.item()
            elapsed = now - tick
            # the steps since the last record: fewer than log_every after an unaligned resume or at the end
            metrics["samples_per_s"] = (step - tick_step) * cfg.train.batch_size / max(elapsed, 1e-9)
            metrics["data_wait_frac"] = data_wait / max(elapsed, 1e-9)
            # what the views cost, whether or not the step waited for them (workers may hide it, or steal the cores)
            metrics["data_cpu_ms_per_sample"] = 1e3 * (t.data.loader.cpu_s - loader_cpu) / max(samples, 1)
            metrics["epoch"] = t.data.loader.epoch
            skips = t.data.loader.skips
            metrics.update({f"data/{k}": v for k, v in skips.state_dict().items() if v})
            if t.data.images is not None:  # the unpaired images' reads and skips, counted apart from the pairs'
                images = t.data.images.loader.skips.state_dict().items()
                metrics.update({f"data/images/{k}": v for k, v in images if v})
            if skips.total_skipped > reported_skips:  # bad input is never silent (docs/DESIGN.md, 'Bad input')
                reported_skips = skips.total_skipped
                log.message(f"step {step}: {skips.summary()}")
            elif skips.total_fallback and not reported_fallback:  # data.decode=device: said once, counted in metrics
                log.message(f"step {step}: {skips.fallback_summary()} (data/fallback/* in metrics.jsonl)")
            reported_fallback = reported_fallback or skips.total_fallback > 0
            tick, data_wait, samples, loader_cpu, tick_step = now, 0.0, 0, t.data.loader.cpu_s, step
            t.history.update(metrics)
            log.log(step, metrics)
            for kind, line in collapse_warnings(metrics, t.model.cfg, cfg.train.batch_size):
                if kind not in t.warned:  # one line per kind of collapse: the metrics keep showing it after
                    t.warned.add(kind)
                    log.message(f"step {step}: {line}")
            shown = metrics
        # every step: the bar moves, and a plain line is printed every print_every steps or print_every_s seconds
        log.progress(step, shown)
        last = step == cfg.train.steps
        is_best = False
        if cfg.eval.every_steps and (step % cfg.eval.every_steps == 0 or last) or (last and cfg.eval.sets):
            results = evaluate(t)
            if results:
                t.history.update(results)
                log.log(step, {**results, "chance": dict(t.evals.chance)})
                log.message(f"step {step}: " + ", ".join(f"{k} {v:.1f}%" for k, v in results.items()))
                is_best = note_best(t, results, step, log)
        saved = (
            step % cfg.ckpt.every_steps == 0 or last or is_best
        )  # the best evaluation's step always has a checkpoint
        if saved:
            save(t)
        # one tiny collective per step (only with several ranks) so that all ranks stop after the same step
        signum = t.stop.signum
        stop = int(all_reduce_max(torch.tensor(signum)).item()) if t.dist.world_size > 1 else signum
        if stop and not last:
            if not saved:
                save(t)
            t.stop.final = True  # the checkpoint is written: a signal now must not undo the clean stop
            name = signal.Signals(stop).name
            raise RunStopped(
                f"stopped by {name} at step {step}; checkpoint {t.last_checkpoint} (run the same command to resume)",
                128 + stop,
            )
    wall = time.perf_counter() - start_time
    best = {**t.best.to_json(), "path": str(t.run_dir / ckpt.CHECKPOINTS_DIR / ckpt.BEST_FILE)} if t.best else None
    return {
        "steps": t.step,
        "trained_steps": t.step - start_step,
        "wall_s": wall,
        "metrics": dict(t.history),
        "run_dir": str(t.run_dir),
        "checkpoint": str(t.last_checkpoint) if t.last_checkpoint else None,
        "best": best,  # eval.best_metric: the evaluation that scored best, and the pointer file that loads it
    }
