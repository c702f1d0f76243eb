"""The loader's worker processes: how they start, how they end, and what their death means.

Schedulers stop a job by signalling its whole process group: ``timeout``, ``kill -- -PGID``, SLURM's ``scancel``,
torchrun when a rank fails, and a terminal's Ctrl-C. The workers are in that group. Left to torch's defaults a
worker dies of SIGTERM (or of a second SIGINT), and the training process then fails with "DataLoader worker ...
killed by signal" before it can write its final checkpoint. So the workers ignore SIGINT and SIGTERM: the
training process alone decides when to stop, finishes its step, checkpoints, and then ends the workers itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import re
import signal
import weakref
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """While the DataLoader forks its workers: hold SIGINT / SIGTERM back from this thread.

    A forked worker starts with its parent's signal mask, so a signal sent to the group while a worker is between
    its fork and ``start_worker`` stays pending there instead of reaching torch's handler (which dies of it);
    ``start_worker`` then ignores it. In this process the signal is delivered as soon as the mask is restored (or
    at once to another thread; Python runs the handler in the main thread either way)."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_worker(worker_id: int, idle: bool = False) -> None:
    """DataLoader ``worker_init_fn``: ignore SIGINT / SIGTERM (see the module docstring), optionally idle priority."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # also drops one held back since the fork
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if idle:
        _idle_priority()


def _idle_priority() -> None:
    """Run only when a core is otherwise idle (Linux ``SCHED_IDLE``).

    On a CPU run the workers share the cores with the model's OpenMP threads. A worker of equal priority
    preempts one of them, and its siblings then wait at the next barrier, so each second of worker time costs
    about a second of step time on two cores. An idle-priority worker runs in the gaps of the step (Python
    between kernels, the optimizer, the wait for the next batch) and the prefetch queue absorbs the rest:
    tiny SLIP on 2 cores goes from 0.68-0.87 to 0.91-0.93 of model-only throughput (docs/PERFORMANCE.md).
    A niced worker (nice 10) still preempts and gained nothing. The cost: on a machine that other processes
    keep busy, idle workers get little CPU and the step waits for data (visible as data time)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not permitted: keep the default priority
        pass


def _kill(workers: Any) -> None:
    """SIGKILL each worker still alive (our workers ignore SIGTERM) and reap it."""
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join(timeout=5)


def track_workers(iterator: Any) -> None:
    """Have the workers of a DataLoader iterator killed when this process exits, whatever still refers to them.

    A consumer that raises while it iterates leaves the iterator in the traceback's frames. At the interpreter's
    exit torch then skips its shutdown, and multiprocessing ends each daemonic child with SIGTERM, which our workers
    ignore, and joins it: the process would wait forever. ``_kill_started_workers`` runs before that join (a
    multiprocessing finaliser of exit priority >= 0) and kills the workers still alive."""
    _STARTED.update(getattr(iterator, "_workers", ()))


def _kill_started_workers() -> None:
    alive = [w for w in _STARTED if w.is_alive()]
    if alive and hasattr(signal, "SIGCHLD"):
        # torch's SIGCHLD handler would raise for the first kill and leave the other workers running
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _kill(alive)


# The workers started in this process that may still run. The finaliser runs in this process only (it records its
# pid), so a worker that imports this module never kills its siblings.
_STARTED: weakref.WeakSet = weakref.WeakSet()
multiprocessing.util.Finalize(None, _kill_started_workers, exitpriority=100)


def stop_workers(iterator: Any) -> None:
    """End the workers of a DataLoader iterator now, not whenever it is garbage collected.

    After an exception the iterator lives on in the traceback's frames, possibly until the interpreter exits, when
    torch skips the shutdown (``track_workers`` covers that case). torch's own shutdown asks each
    worker to leave and, for one that does not, falls back to SIGTERM, which our workers ignore: SIGKILL ends those.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)  # absent with num_workers=0
    if shutdown is None:
        return
    shutdown()
    _kill(getattr(iterator, "_workers", ()))


# torch's words for a worker that died: from its SIGCHLD handler ("is killed by signal: Killed.", "exited
# unexpectedly with exit code 1.") or from the wait for a batch ("DataLoader worker (pid(s) 12, 13) exited
# unexpectedly").
_DEATH = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? (?P<pids>[\d, ]+)\) "
    r"(?:is killed by signal: (?P<signal>[^.]+)\.|exited unexpectedly(?: with exit code (?P<code>-?\d+))?)"
)
# why a worker usually gets these signals (the kernel's OOM killer sends SIGKILL)
_HINTS = {"SIGKILL": " (out of memory?)", "SIGBUS": " (out of shared memory? /dev/shm may be too small)"}


def describe_worker_death(err: BaseException) -> str | None:
    """ "data loader worker (pid N) was killed by signal SIGKILL (out of memory?)" for the error torch raises when a
    worker died; None for any other error."""
    found = _DEATH.search(str(err)) if isinstance(err, RuntimeError) else None
    if found is None:
        return None
    pids = found["pids"].strip()
    plural = "s" if "," in pids else ""
    who = f"data loader worker{plural} (pid{plural} {pids})"
    if found["signal"]:
        name = _signal_name(found["signal"].strip())
        return f"{who} was killed by signal {name}{_HINTS.get(name, '')}"
    if found["code"]:
        return f"{who} exited with code {found['code']}"
    return f"{who} exited unexpectedly"


def named_deaths(batches: Iterator[Any]) -> Iterator[Any]:
    """The batches of a DataLoader iterator; a worker's death it reports without a cause ("exited unexpectedly",
    when torch's wait for a batch notices it before its SIGCHLD handler does) is restated with the signal that
    killed it, read from the worker's exit status, so the same kill gives the same message whichever check wins."""
    try:
        yield from batches
    except RuntimeError as err:
        found = _DEATH.search(str(err))
        if found is None or found["signal"] or found["code"]:
            raise
        codes = {w.pid: w.exitcode for w in getattr(batches, "_workers", ())}
        pids = [int(p) for p in found["pids"].replace(",", " ").split()]
        killed = [(pid, -codes[pid]) for pid in pids if isinstance(codes.get(pid), int) and codes[pid] < 0]
        if not killed:
            raise
        pid, number = killed[0]
        raise RuntimeError(f"DataLoader worker (pid {pid}) is killed by signal: {signal.strsignal(number)}.") from err


def _signal_name(description: str) -> str:
    """SIGKILL for "Killed" (torch reports a signal by its ``strsignal`` text)."""
    for s in signal.Signals:
        if signal.strsignal(s) == description:
            return s.name
    return description
