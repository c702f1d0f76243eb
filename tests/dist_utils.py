"""Run a function in N spawned CPU processes joined into a gloo process group, for multi-process tests.

Usage (the function must live at module level so that spawn can pickle it by name)::

    from dist_utils import run_distributed

    def _body(info, scale):          # info: openslip.distributed.DistInfo
        return {"rank": info.rank, "x": torch.ones(2) * scale}

    results = run_distributed(_body, 2, 3.0)   # one result per rank, in rank order

Each child sets the torchrun environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and joins through :func:`openslip.distributed.init_distributed`, so
the launcher also exercises the library's own setup path. Results travel back through ``torch.save``
files (tensors, numbers, strings, lists and dicts of them). An exception in any child is re-raised in
the parent with the child's traceback; a run past ``timeout_s`` is killed and fails.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def find_free_port() -> int:
    """A TCP port on localhost that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child(local_rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(local_rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(world_size),
        }
    )
    torch.set_num_threads(1)  # the test machine's cores are shared by every process
    from openslip import distributed

    info = distributed.init_distributed(backend="gloo", timeout_s=120)
    try:
        result = fn(info, *args)
        distributed.barrier()
    finally:
        distributed.destroy_distributed()
    torch.save(result, Path(out_dir) / f"rank{local_rank}.pt")
    # Leave without interpreter finalization: once under a loaded full suite, a child whose training had matched
    # aborted in C++ destructors at exit ("terminate called without an active exception", SIGABRT). The result is
    # on disk and the process group is gone, so nothing is skipped that the tests check.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn: Callable[..., Any], world_size: int = 2, *args: Any, timeout_s: float = 120.0) -> list[Any]:
    """Call ``fn(info, *args)`` on ``world_size`` gloo ranks; return the per-rank results in rank order."""
    with tempfile.TemporaryDirectory(prefix="openslip_dist_") as out_dir:
        ctx = mp.start_processes(
            _child,
            args=(fn, world_size, find_free_port(), out_dir, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    if proc.is_alive():
                        proc.kill()
                for proc in ctx.processes:
                    proc.join()
                raise TimeoutError(f"distributed test did not finish within {timeout_s:.0f} s")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
