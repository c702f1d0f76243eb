"""Pre-training: the only part of openslip that reads the typed `Config` (docs/ARCHITECTURE.md).

`config.py` (the typed sections, each checking its own fields) and `checks.py` (the checks across sections and
parts); `recipes.py` and `paper.py` (the named recipes); `loop.py` (`train(cfg)`: the trainer, its step, resume,
signals), `rundir.py` (the run directory's lock and the resume diff), `evals.py` (the periodic evaluations);
`data.py`, `optimizer.py`, `state.py`, `run_log.py`, `accumulate.py`, `best.py` and `perf.py` (its parts).
`from openslip.train import train` is the entry point; the loop is imported on first use so that reading a config
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "openslip.train.loop", "build_trainer": "openslip.train.loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openslip.train' has no attribute {name!r}")
