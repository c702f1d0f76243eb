"""What a run writes while it trains: metrics as JSON lines, TensorBoard when installed, a progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openslip import files
from openslip.weights.atomic import atomic_file


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    return value


class RunLogger:
    """Rank 0 writes `OUT_DIR/metrics.jsonl` (one object per logged step) and TensorBoard events, and shows
    progress: a bar on an interactive terminal, else (output to a file or a pipe, or `train.progress=false`)
    plain lines every `print_every` steps (0: about ten per run) and at least every `print_every_s` seconds (a
    slow run under load is never silent for minutes); other ranks log nothing."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress: bool,
        print_every: int = 0,
        print_every_s: float = 30.0,
        wandb: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.metrics_path = run_dir / "metrics.jsonl"
        self._file = None
        self._tb = None
        self._bar = None
        self._wandb = _start_wandb(run_dir, wandb) if enabled and wandb else None
        self.print_every = print_every or max(1, round(total_steps / 10))
        self.print_every_s = print_every_s
        self._clock = clock
        self._start(start_step)
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: JSON lines only
                self._tb = None
            if progress and sys.stderr.isatty():  # a bar redrawn with \r is unreadable in a log file
                try:
                    from tqdm import tqdm

                    self._bar = tqdm(
                        total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
                    )
                except ImportError:
                    self._bar = None

    def _start(self, step: int) -> None:
        self._start_step, self._start_time = step, time.perf_counter()
        self._next_line = step + self.print_every
        self._last_line_at = self._clock()

    def start_at(self, step: int) -> None:
        """The run continues after `step` (0: from the start). The steps after its checkpoint are trained again,
        so their records of the interrupted attempt are dropped: metrics.jsonl keeps one record per step."""
        if not self.enabled:
            return
        self._start(step)
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()
        if self._file is not None:
            self._file.close()
        if self.metrics_path.exists():  # streamed: a long run's log is never held whole; a FIFO is refused
            # atomic: a crash here leaves the old file or the new one
            with atomic_file(self.metrics_path, "w", encoding="utf-8", errors="surrogateescape") as out:
                for line in files.read_lines(self.metrics_path, errors="surrogateescape"):
                    if _step_of(line) <= step:
                        out.write(line.rstrip("\r\n") + "\n")
        self._file = open(self.metrics_path, "a")  # noqa: SIM115 - closed in close()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._file = open(self.metrics_path, "a")  # noqa: SIM115 - closed in close()
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}, "time": round(time.time(), 3)}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, int | float)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def progress(self, step: int, metrics: dict[str, Any]) -> None:
        """Advance the bar to `step` (loss and samples/s; tqdm shows the ETA), or print a plain line when due."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            shown = {k: f"{_jsonable(metrics[k]):.3g}" for k in ("loss", "samples_per_s") if k in metrics}
            self._bar.set_postfix(shown, refresh=False)
            return
        due = self._clock() - self._last_line_at >= self.print_every_s
        if step < self._next_line and step != self.total_steps and not due:
            return
        self._next_line = step + self.print_every
        self._last_line_at = self._clock()
        print(self.progress_line(step, metrics), file=sys.stderr, flush=True)

    def progress_line(self, step: int, metrics: dict[str, Any]) -> str:
        """`step 120/300 (40%) | loss 5.8123 | 95.3 samples/s | lr 2.10e-03 | ETA 1.9 min`."""
        parts = [f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%)"]
        if "loss" in metrics:
            parts.append(f"loss {_jsonable(metrics['loss']):.4f}")
        if "samples_per_s" in metrics:
            parts.append(f"{_jsonable(metrics['samples_per_s']):.1f} samples/s")
        if "lr" in metrics:
            parts.append(f"lr {_jsonable(metrics['lr']):.2e}")
        done, elapsed = step - self._start_step, time.perf_counter() - self._start_time
        if 0 < done and step < self.total_steps:
            parts.append(f"ETA {_duration(elapsed / done * (self.total_steps - step))}")
        return " | ".join(parts)

    def message(self, text: str) -> None:
        """A line for the user (rank 0), printed above the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def _start_wandb(run_dir: Path, settings: dict[str, Any]) -> Any:
    """A W&B run for this run directory: its id is kept in the directory, so a resumed run continues the same
    W&B run (W&B drops records of steps it already has, as metrics.jsonl does)."""
    import wandb

    id_file = run_dir / "wandb_id"
    run_id = files.read_text(id_file, limit=files.POINTER_BYTES).strip() if id_file.exists() else None
    run_id = run_id or wandb.util.generate_id()
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=settings["project"], name=run_dir.resolve().name, id=run_id, resume="allow",
        dir=str(run_dir), config=settings.get("config"),
    )  # fmt: skip


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; an unreadable line (a write cut short) counts as past every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
