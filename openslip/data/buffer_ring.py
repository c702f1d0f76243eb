"""The memory of a loader worker's batches: shared memory, written once, and reused batch after batch.

Why (issue 27's page faults): a worker that builds each batch in a new shared-memory segment pays for it twice.
The kernel hands it fresh pages, zeroed as the worker first writes them (a plain copy into a new buffer is 14x
slower than into one written before: 0.20 against 0.014 ms for a 500 x 375 image), and the training process maps
the new segment and faults on every page it reads (37,756 faults in 8 steps of B/16 with data.augment=cpu on the
GPU machine). A worker with data of its own stacked in ordinary memory paid a third time: torch moves such a
tensor into a new shared segment when it is sent.

So every batch tensor of the images is built in shared memory directly (``batch_buffers``), and a worker whose
loader reuses buffers (``TrainLoader(reuse_buffers=True)``) carves them from a ring of a few segments it keeps
(``BufferRing``). The training process keeps each segment mapped (torch's sharing rebuilds a storage it still holds
from its cache instead of mapping it again), so after the first round neither side faults.

The contract: a batch carries a ``Lease`` on its segment; the consumer hands it back (``TrainLoader.release``)
once it has read the batch's images for the last time, and only then may the worker write the segment again. A
worker whose segments are all still lent builds the batch in a new segment, as without the ring: a consumer that
never hands back is only slower, never wrong.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch
from torch.utils.data import get_worker_info

FREE, LENT = 0, 1
_ALIGN = 64  # bytes: each part of a batch's segment starts aligned for any dtype (and a cache line)
_GROWTH = 1.25  # a segment is made this much larger than its first batch: the next batch's JPEGs may be larger
_ids = itertools.count()


def new_buffer(size: int) -> torch.Tensor:
    """An uninitialised uint8 [size]: in shared memory in a DataLoader worker (a tensor outside it would be copied
    into a new shared segment when the batch is sent), in ordinary memory elsewhere."""
    if get_worker_info() is None:
        return torch.empty(size, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))


class Lease:
    """One batch's hold on a segment of a worker's ring. A plain class, not a tuple: the DataLoader's pinning leaves
    it as it is (it would copy a tuple's tensors into pinned memory)."""

    def __init__(self, ring: tuple[int, int], slot: int, state: torch.Tensor, segment: torch.Tensor) -> None:
        self.ring = ring  # (worker pid, ring number): which ring of which worker
        self.slot = slot
        self.state = state  # uint8 [slots] in shared memory: FREE / LENT per slot, written by both processes
        self.segment = segment  # the whole segment: holding it keeps the consumer's mapping of it

    def give_back(self) -> None:
        self.state[self.slot] = FREE


class BufferRing:
    """A worker's reusable shared-memory segments, ``slots`` of them, each lent to one batch at a time."""

    def __init__(self, slots: int) -> None:
        self.id = (os.getpid(), next(_ids))
        self.state = new_buffer(slots).zero_()  # FREE
        self._state = self.state.numpy()
        self.segments: list[torch.Tensor | None] = [None] * slots

    def take(self, size: int) -> tuple[torch.Tensor, Lease | None]:
        """uint8 [size] for a batch, from a free segment (grown if too small), or a new one if none is free."""
        free = [i for i, s in enumerate(self._state) if s == FREE]
        if not free:
            return new_buffer(size), None
        fits = [i for i in free if self.segments[i] is not None and self.segments[i].numel() >= size]
        slot = fits[0] if fits else free[0]
        if not fits:
            self.segments[slot] = new_buffer(int(size * _GROWTH))
        segment = self.segments[slot]
        self._state[slot] = LENT
        return segment[:size], Lease(self.id, slot, self.state, segment)


_ring: BufferRing | None = None  # this worker process's ring (a worker belongs to one loader)


def worker_ring(slots: int) -> BufferRing | None:
    """This DataLoader worker's ring of ``slots`` segments (made on first use); None outside a worker or for 0."""
    global _ring
    if slots <= 0 or get_worker_info() is None:
        return None
    if _ring is None or len(_ring.segments) != slots:
        _ring = BufferRing(slots)
    return _ring


def batch_buffers(sizes: Sequence[int], ring: BufferRing | None) -> tuple[list[torch.Tensor], Lease | None]:
    """uint8 buffers of ``sizes`` bytes for one batch's tensors: in shared memory in a worker, carved from one
    segment of ``ring`` when given (each part 64-byte aligned, so a part may be viewed as any dtype)."""
    if ring is None:
        return [new_buffer(n) for n in sizes], None
    starts = []
    end = 0
    for n in sizes:
        starts.append(end)
        end += -(-n // _ALIGN) * _ALIGN
    segment, lease = ring.take(end)
    return [segment[s : s + n] for s, n in zip(starts, sizes, strict=True)], lease
