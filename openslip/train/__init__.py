"""Pre-training: the only part of openslip that reads the typed `Config`.

`config.py` (the typed sections and overrides), `recipes.py` and `paper.py` (the named recipes), `data.py` (the
loader a config asks for), `loop.py` (`train(cfg)`: the trainer, its step, resume, signals), `evals.py` (its
periodic evaluation: eval.sets through `openslip.eval.suite.EVALS`), `state.py`,
`run_log.py`, `accumulate.py`, `best.py` and `perf.py` (its parts). `from openslip.train import train` is the
entry point; the loop is imported on first use so reading a config stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "openslip.train.loop", "build_trainer": "openslip.train.loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openslip.train' has no attribute {name!r}")
