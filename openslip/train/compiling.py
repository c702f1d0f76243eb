"""``train.compile``: whether the model is ``torch.compile``-d, in which mode, and where the compiled kernels are kept.

``auto`` compiles on CUDA, where a compiled ViT step is faster (issue 27: SLIP B/16 from 34 % to 44 % MFU on an
H200), and not on a CPU, where inductor takes minutes for the micro models the tests and the demo train.

The compile cache: inductor keeps its compiled graphs (the FX graph and AOTAutograd caches, on by default) and the
Triton kernels under ``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_$USER``, which a reboot or a fresh
container empties, and a restarted run then compiles again for minutes. openslip points it at a lasting directory
(``compile_cache_dir``) unless the variable is already set: the user's choice stands.

``train.compile_mode=reduce-overhead`` replays the compiled graphs with CUDA graphs (issue 27: S/16 is launch-bound,
its kernels too small to hide the CPU's time to launch them). A step with ``train.accum_steps`` > 1 runs the bare model
(exact accumulation), so it is neither compiled nor graphed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """The resolved ``train.compile``: true / false as given, ``auto`` on CUDA only."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


# the modes whose compiled forward and backward replay as CUDA graphs (on CUDA; a CPU run compiles without them)
GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_model(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile(module)`` in ``train.compile_mode`` ("default": torch's default mode)."""
    return torch.compile(module, mode=None if mode == "default" else mode)


def new_graph_step() -> None:
    """Before each training step's forward under CUDA graphs: a graph replay reuses its outputs' memory, and this tells
    torch a new iteration begins, so the last step's outputs (consumed by then) may be overwritten."""
    torch.compiler.cudagraph_mark_step_begin()


def _torch_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch layout: only an unset variable counts as unset
        return None
    return os.path.abspath(default_cache_dir())


def compile_cache_dir() -> Path:
    """``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else ``$XDG_CACHE_HOME/openslip/torch-compile``
    (``~/.cache/...``). Inductor writes its ``/tmp`` default into the variable once it has looked it up, so that
    value counts as unset."""
    given = os.environ.get(CACHE_ENV)
    if given and os.path.abspath(given) != _torch_default():
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "openslip" / "torch-compile"


def keep_compiled_kernels() -> Path:
    """Point inductor's caches at ``compile_cache_dir()`` (before the first compile); returns the directory."""
    path = compile_cache_dir()
    os.environ[CACHE_ENV] = str(path)
    return path
