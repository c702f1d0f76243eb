"""The next step's batch prepared while the current step runs (CUDA only): copy, decode and views on a side stream.

Without it the GPU idles at the start of every step while the batch is copied (pinned memory, ``non_blocking``),
decoded (``data.decode=device``) and augmented (``data.augment=device``) on the step's own stream. With it, step
``s``'s batch is prepared on a side CUDA stream before step ``s - 1`` is launched, so the two run side by side, and
step ``s``'s stream waits for the side stream only when it reads its inputs (``TrainData.views``).

Exact resumption: preparing batch ``s + 1`` takes it from the loader (and, with ``data.train_images``, the unpaired
images' batch from theirs) before step ``s``'s checkpoint is written. The loaders' states from before they were
taken are held (``TrainData.hold``), and those are what the checkpoint saves, so a resumed run starts at batch
``s + 1`` again. The views draw from (seed, step) whichever step prepares them.

On a CPU there is no second stream to run on, and nothing is prepared ahead (the path is the plain one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from openslip.train.data import TrainData

AHEAD_DEVICES = ("cuda",)  # device types that prepare ahead (tests add "cpu" to check the bookkeeping)


def prepared_ahead(
    batches: Iterator[dict[str, Any]], data: TrainData, device: torch.device, step: int, last_step: int
) -> Iterator[dict[str, Any]]:
    """The loader's batches for steps ``step``, ``step + 1``, ... < ``last_step``; each is yielded after the next
    one was taken and its inputs prepared (``TrainData.prepare``), and no batch beyond ``last_step`` is taken."""
    if device.type not in AHEAD_DEVICES:
        yield from batches
        return
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    batch = next(batches)
    # the first batch too, before the next is taken: views take the unpaired images' batches (data.train_images) in
    # the order they are prepared, which must be the steps' order
    data.prepare(batch, step, device, stream)
    while True:
        upcoming = None
        data.release()
        if step + 1 < last_step:
            data.hold()  # the loaders' states before the upcoming batch is taken: what a checkpoint saves
            upcoming = next(batches)
            data.prepare(upcoming, step + 1, device, stream)
        yield batch
        if upcoming is None:
            return
        batch, step = upcoming, step + 1
