"""Process-level settings that make CPU training faster, applied once at trainer start.

`tune_cpu_runtime()` keeps glibc malloc from handing large tensors back to the kernel after every
step. By default glibc serves blocks above the mmap threshold (at most 32 MiB) with fresh `mmap`s and
returns them with `munmap`, and trims the heap top on `free`: a training step allocates and frees
the same activations every step, so every step page-faults its whole working set back in (seconds per
fp32 ViT-S/16 step on a 2-core machine; see docs/PERFORMANCE.md). Switching mmap off
(`M_MMAP_MAX = 0`), never trimming and padding heap growth keeps the freed memory in the process,
where the next step reuses it. The cost is that peak memory stays resident (it is reused, not grown).

Nothing here changes numerics. `OPENSLIP_NO_TUNE=1` in the environment turns it off (benchmarks use it
to measure the difference; docs/DESIGN.md, 'Measuring performance').
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass, field

import torch

# glibc <malloc.h> parameter numbers for mallopt()
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

TOP_PAD_BYTES = 64 << 20  # grow the heap in 64 MiB steps: fewer brk calls while the first steps run
TRIM_THRESHOLD_BYTES = 1 << 40  # effectively never give the heap top back to the kernel


@dataclass
class RuntimeTuning:
    """What `tune_cpu_runtime` did (logged by the trainer, stored in benchmark results)."""

    malloc: dict[str, int] = field(default_factory=dict)  # mallopt settings that were accepted
    threads: int = 0  # torch intra-op threads after tuning
    skipped: str | None = None  # why nothing was changed, if so

    def as_dict(self) -> dict[str, object]:
        return {"malloc": dict(self.malloc), "threads": self.threads, "skipped": self.skipped}


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def tune_malloc() -> dict[str, int]:
    """Keep freed tensor memory in the process (glibc only; a no-op on other C libraries)."""
    libc = _libc()
    if libc is None:
        return {}
    settings = {
        "M_MMAP_MAX": (_M_MMAP_MAX, 0),  # no mmap for large blocks: they come from (and return to) the heap
        "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        "M_TOP_PAD": (_M_TOP_PAD, TOP_PAD_BYTES),
    }
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = {}
    for name, (param, value) in settings.items():
        value = min(value, 2**31 - 1)  # mallopt takes an int
        if libc.mallopt(param, value) == 1:
            applied[name] = value
    return applied


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask, e.g. under taskset / cgroups)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tune_cpu_runtime(*, threads: int | None = None) -> RuntimeTuning:
    """Apply the CPU runtime settings once at trainer start; returns what was done.

    threads: torch intra-op threads; None keeps torch's choice unless it exceeds the cores this
    process may use (oversubscription makes every matmul wait for a descheduled thread).
    """
    if os.environ.get("OPENSLIP_NO_TUNE", "") not in ("", "0"):
        return RuntimeTuning(threads=torch.get_num_threads(), skipped="OPENSLIP_NO_TUNE is set")
    result = RuntimeTuning(malloc=tune_malloc())
    cores = available_cores()
    wanted = threads if threads is not None else min(torch.get_num_threads(), cores)
    if wanted != torch.get_num_threads():
        torch.set_num_threads(max(1, wanted))
    result.threads = torch.get_num_threads()
    return result


def fast_bf16_available(device: torch.device) -> bool:
    """Whether bf16 matmuls have hardware support on `device` (CUDA: Ampere+, CPU: AVX512-BF16 / AMX).

    Without it, CPU bf16 matmuls fall back to slow emulated kernels (10-100x slower than fp32 here)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return True
