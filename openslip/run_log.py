"""What a run writes while it trains: metrics as JSON lines, TensorBoard when installed, a progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    return value


class RunLogger:
    """Rank 0 writes `OUT_DIR/metrics.jsonl` (one object per logged step) and TensorBoard events;
    other ranks log nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int, progress: bool) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self._file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115 - closed in close()
        self._tb = None
        self._bar = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: JSON lines only
                self._tb = None
            if progress:
                try:
                    from tqdm import tqdm

                    self._bar = tqdm(
                        total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
                    )
                except ImportError:
                    self._bar = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}, "time": round(time.time(), 3)}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)

    def progress(self, step: int, metrics: dict[str, Any]) -> None:
        """Advance the bar to `step`, showing loss and samples/s (tqdm shows the ETA)."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        shown = {k: f"{_jsonable(metrics[k]):.3g}" for k in ("loss", "samples_per_s") if k in metrics}
        self._bar.set_postfix(shown, refresh=False)

    def message(self, text: str) -> None:
        """A line for the user (rank 0), printed above the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
