"""The training loader: disjoint rank x worker splits, bad-sample replacement, exact resumption.

``build_train_loader`` returns a ``TrainLoader``. Iterating it yields the rest of the current epoch as
batches ``{**transform outputs (e.g. image, view1, view2): float [B, ...], "text": long [B, 77],
"id": long [B]}``; ``forever()`` runs epoch after epoch. ``state_dict()`` (epoch, batches consumed in
the epoch, seed, stream positions, skip counts) goes into checkpoints; a new loader given
``load_state_dict(state)`` yields exactly the batches the uninterrupted one would have yielded. A loader built
with ``reuse_buffers`` adds a ``_lease`` to each batch a worker built in its ring of shared-memory segments: the
consumer hands it back with ``release(batch)`` once it has read the batch's images (``openslip.data.buffer_ring``).

Batches are built whole inside the workers (the dataset is an ``IterableDataset`` of batches and the
``DataLoader`` runs with ``batch_size=None``), which keeps the batch size constant while bad samples are
replaced, and lets each batch carry its skip counts back to the main process. The ``DataLoader`` hands
out worker results round-robin (worker 0, 1, ..., skipping exhausted workers), so every worker is given
exactly the batches that round-robin order assigns to it.

**Map-style sources.** Epoch ``e`` uses the permutation ``perm`` of all indices drawn from (seed, e).
Rank ``r`` of ``R`` owns permutation positions ``r, r + R, r + 2R, ...`` up to ``R * (n // R)`` (the
``n mod R`` last positions are left out of the epoch, so every rank has the same count), and its batch
``b`` is its ``b``-th run of ``B`` positions. Hence global batch ``b`` (all ranks together) is positions
``[b R B, (b + 1) R B)`` whatever ``R`` is, and resumption converts between world sizes that keep the
global batch. Worker ``w`` builds batches ``b = w (mod W)``. A sample that fails to load (``BadSample``)
is counted and replaced by a sample drawn at a position chosen by hash(seed, e, position, attempt): the
batch stays full and its content does not depend on the number of workers.

**Shards.** Each epoch shuffles the shard list with (seed, e); shard ``k`` goes to rank ``k mod R`` and,
within it, to worker stream ``(k // R) mod W``. A worker reads its shards in order and cuts batches of
``B`` consecutive good samples; when bad samples leave it short, it continues from the start of its own
shards (a few samples repeat); after ``max_attempts + 1`` failures in a row (shards without one usable
sample) it stops with a ``DataError`` naming its shards instead of reading them round and round. From the
shard sizes (``index.json``) every rank computes the batch count of every worker of every rank, and all
ranks yield ``min over ranks`` batches: the tail of each stream (fewer than ``B`` samples) and a rank's
batches beyond that minimum are not used this epoch (the shard order, hence what is left over, changes
every epoch). Exact resumption of shards needs the same world size, worker count and batch size; otherwise
the loader warns and starts the next epoch.

Randomness: before each sample's transform, ``torch``'s CPU generator, ``random`` and ``numpy.random``
are seeded from hash(seed, epoch, sample position); the caption of a multi-caption sample is picked by
hash(seed, epoch, sample). The caller's RNG state is restored afterwards (it matters with
``num_workers=0``).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from openslip.data.buffer_ring import Lease
from openslip.data.epoch_plan import (
    BatchSettings,
    MapPlan,
    ShardPlan,
    Tokenize,
    Transform,
    mix_seed,
    round_robin,
)
from openslip.data.formats.decode import DEFAULT_DECODE, DecodeOptions
from openslip.data.formats.shards import ShardSource
from openslip.data.skips import SkipCounter
from openslip.data.workers import named_deaths, start_worker, stop_signals_held, stop_workers, track_workers
from openslip.errors import DataError

LEASE_KEY = "_lease"  # a batch's hold on its worker's segment (reuse_buffers)


class _BatchStream(IterableDataset):
    """What each DataLoader worker iterates: the batches of its logical worker, in order."""

    def __init__(self, loader: TrainLoader, epoch: int, start: int, rotation: int) -> None:
        super().__init__()
        self.plan = loader._plan
        self.kind = loader.kind
        self.epoch = epoch
        self.start = start
        self.rotation = rotation
        self.num_logical = loader._num_streams
        self.quotas = _remaining_quotas(self.plan, epoch, start) if self.kind == "shards" else None
        self.stream_pos = list(loader._streams) if self.kind == "shards" else None
        self._started = False

    def _next_epoch(self) -> None:
        """A persistent worker iterates its stream once per epoch: the second time on, the next epoch whole. Each
        worker advances its own copy; the main process consumes every epoch to its end before asking again."""
        self.epoch, self.start = self.epoch + 1, 0
        self.rotation = _rotation(self.plan, self.kind, self.epoch, 0)
        if self.kind == "shards":
            self.quotas = _remaining_quotas(self.plan, self.epoch, 0)
            self.stream_pos = [(0, 0, 0)] * self.num_logical

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._started:  # not in the generator: a restarted stream moves on even if it is never advanced
            self._next_epoch()
        self._started = True
        return self._iterate()

    def _iterate(self) -> Iterator[dict[str, Any]]:
        try:
            batches = self._batches()
            while (batch := _timed_next(batches)) is not None:
                yield batch
        except DataError as err:
            # Re-raised by the main process: the DataLoader would wrap it in a multi-line worker traceback.
            yield {"_meta": {"error": str(err)}}

    def _batches(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != self.num_logical:
            raise RuntimeError(f"{workers} DataLoader workers for {self.num_logical} streams")
        if self.kind == "map":
            # Batches start, start + 1, ... are consumed round-robin from worker 0, and a map-style batch does
            # not depend on the worker that builds it.
            for b in range(self.start + worker, self.plan.batches_per_epoch(self.epoch), self.num_logical):
                batch = self.plan.make_batch(self.epoch, b)
                batch["_meta"]["batch"] = b
                yield batch
        else:
            # A shard stream belongs to one logical worker; rotate so that the DataLoader's worker 0 runs the
            # stream whose batch comes next.
            logical = (worker + self.rotation) % self.num_logical
            yield from self.plan.iterate(self.epoch, logical, self.quotas[logical], tuple(self.stream_pos[logical]))


def _timed_next(batches: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    """The next batch, its ``_meta`` carrying the CPU time this thread spent building it (reading, decoding, views,
    tokens); None at the end. Thread time, not process time: with ``num_workers=0`` the batch is built in the
    training process, whose other threads must not count."""
    start = time.thread_time()
    batch = next(batches, None)
    if batch is not None:
        batch["_meta"]["cpu_s"] = time.thread_time() - start
        # when the batch left its builder: the main process splits its wait there (TrainLoader.wait_s / handoff_s);
        # CLOCK_MONOTONIC is one clock for every process of the machine
        batch["_meta"]["sent"] = time.monotonic()
    return batch


# ---------------------------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------------------------


class TrainLoader:
    """Resumable, rank-split training batches; see the module docstring. Build with ``build_train_loader``."""

    def __init__(
        self,
        source: Any,
        transform: Transform,
        tokenize: Tokenize | None,
        *,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        max_skip_rate: float | None = 0.1,
        min_samples_for_check: int = 100,
        max_attempts: int = 100,
        decode: DecodeOptions = DEFAULT_DECODE,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        multiprocessing_context: Any = None,
        idle_workers: bool = False,
        captions: bool = True,
        resampled: bool = False,
        reuse_buffers: bool = False,
        view_dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        if num_workers < 0:
            raise DataError(f"num_workers must be >= 0, got {num_workers}")
        self.source = source
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.max_skip_rate = max_skip_rate
        self.min_samples_for_check = min_samples_for_check
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.idle_workers = idle_workers
        self._num_streams = max(1, num_workers)
        self._common = BatchSettings(
            transform=transform,
            tokenize=tokenize,
            seed=int(seed),
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            max_attempts=max_attempts,
            decode=decode,
            captions=captions,
            resampled=resampled,
            # a batch is built while prefetch_factor others wait and one is consumed; one more is slack
            ring_slots=(prefetch_factor or 2) + 2 if reuse_buffers and num_workers > 0 else 0,
            view_dtype=view_dtype,
        )
        # the segments of the workers' rings given back, held so this process keeps them mapped (buffer_ring)
        self._kept: dict[tuple[tuple[int, int], int], Lease] = {}
        if isinstance(source, ShardSource):
            self.kind = "shards"
            self._plan: Any = ShardPlan(source, self._common, self._num_streams)
        elif hasattr(source, "record") and hasattr(source, "__len__"):
            self.kind = "map"
            self._plan = MapPlan(source, self._common, drop_last)
        else:
            raise TypeError(f"not a data source (needs __len__ + record(i), or a ShardSource): {type(source).__name__}")
        self.skips = SkipCounter()
        self.cpu_s = 0.0  # CPU seconds spent building the batches handed out so far (the loader's cost)
        # Seconds the consumer waited for the batches handed out so far, split where each batch left its builder:
        # before, the workers were still building it (reading, decoding, views, collation); after, the hand-off
        # (the queue from the worker, unpickling its shared memory, pinning, this loader's bookkeeping).
        self.wait_s = 0.0
        self.handoff_s = 0.0
        self.collate_s = 0.0  # of cpu_s: the CPU seconds of collation (stacking or packing, tokenizing)
        self._epoch = 0
        self._position = 0
        self._streams: list[tuple[int, int, int]] = [(0, 0, 0)] * self._num_streams

    # -- public state ---------------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self._common.seed

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Batches of the current epoch already handed out on this rank."""
        return self._position

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self._plan.batches_per_epoch(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self._epoch, self._position = int(epoch), 0
        self._streams = [(0, 0, 0)] * self._num_streams

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_streams": self._num_streams,
            "streams": [list(s) for s in self._streams],
            "skips": self.skips.state_dict(),
            "resampled": self._common.resampled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where the loader that wrote ``state`` stopped (see the module docstring for the conditions)."""
        if state.get("kind") != self.kind:
            raise DataError(f"loader state is for a {state.get('kind')!r} source, this loader reads {self.kind!r}")
        self._common.seed = int(state["seed"])
        if self.kind == "map":
            self._plan._perm_epoch = None
        else:
            self._plan._cache = {}
        self.skips.load_state_dict(state.get("skips", {}))
        epoch, position = int(state["epoch"]), int(state["position"])
        same_shape = (state["batch_size"], state["world_size"]) == (self.batch_size, self.world_size)
        if self.kind == "map":
            if not same_shape:  # global batch b covers permutation positions [b*R*B, (b+1)*R*B): convert
                consumed = position * int(state["batch_size"]) * int(state["world_size"])
                per_global = self.batch_size * self.world_size
                if consumed % per_global:
                    warnings.warn(
                        f"resuming with a different global batch: {consumed % per_global} samples of the epoch "
                        "are skipped",
                        stacklevel=2,
                    )
                position = math.ceil(consumed / per_global)
            self._epoch, self._position = epoch, position
            self._streams = [(0, 0, 0)] * self._num_streams
        elif (
            same_shape
            and int(state["num_streams"]) == self._num_streams
            and bool(state.get("resampled", False)) == self._common.resampled  # a stream position means another thing
        ):
            self._epoch, self._position = epoch, position
            self._streams = [tuple(s) for s in state["streams"]]
        else:
            warnings.warn(
                "shard loader resumed with a different world size, batch size, worker count or data.resampled: the "
                f"rest of epoch {epoch} is skipped and reading starts at epoch {epoch + 1}",
                stacklevel=2,
            )
            self.set_epoch(epoch + 1)

    # -- iteration ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The remaining batches of the current epoch; afterwards the loader stands at the next epoch."""
        stream, epoch = self._stream()
        with stop_signals_held():  # the workers fork here (see data/workers.py)
            batches = iter(self._dataloader(stream, epoch))
        track_workers(batches)
        try:
            yield from self._consume(batches, epoch)
        finally:  # the epoch ended, or the consumer stopped early (a signal, an error): the workers end now
            stop_workers(batches)
            self._kept.clear()

    def _stream(self) -> tuple[_BatchStream, int]:
        """What the workers iterate from where the loader stands (the next epoch when this one is used up)."""
        if self._position >= self._plan.batches_per_epoch(self._epoch):
            self.set_epoch(self._epoch + 1)
        epoch, start = self._epoch, self._position
        return _BatchStream(self, epoch, start, _rotation(self._plan, self.kind, epoch, start)), epoch

    def _consume(self, batches: Iterator[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        """The batches of one epoch from the workers, checked to arrive in order, with the loader's state kept."""
        arriving = named_deaths(batches)
        while True:
            asked = time.monotonic()
            batch = next(arriving, None)
            if batch is None:
                break
            meta = batch.pop("_meta")
            if "error" in meta:
                raise DataError(meta["error"])
            if "stream" in meta:
                logical, *pos = meta["stream"]
                self._streams[logical] = tuple(int(p) for p in pos)
            elif meta.get("batch") != self._position:
                raise RuntimeError(f"batch {meta.get('batch')} arrived at position {self._position}")
            if "lease" in meta:
                batch[LEASE_KEY] = meta["lease"]
            self.skips.update(meta["skips"])
            self.cpu_s += meta.get("cpu_s", 0.0)
            self.collate_s += meta.get("collate_s", 0.0)
            self._position += 1
            self.skips.check(self.max_skip_rate, min_samples=self.min_samples_for_check)
            ready = min(max(meta.get("sent", asked), asked), time.monotonic())
            self.wait_s += ready - asked
            self.handoff_s += time.monotonic() - ready
            yield batch
        if self._epoch == epoch and self._position >= self._plan.batches_per_epoch(epoch):
            self.set_epoch(epoch + 1)

    def release(self, batch: dict[str, Any]) -> None:
        """Hand back the segment of a batch that a worker built in its ring (``reuse_buffers``): the worker may write
        its next batch there, so the batch's images must not be read again. Nothing for other batches."""
        lease = batch.pop(LEASE_KEY, None)
        if lease is not None:
            lease.give_back()
            self._kept[(lease.ring, lease.slot)] = lease  # its segment stays mapped for the batch it comes back with

    def forever(self) -> Iterator[dict[str, Any]]:
        """Batches across epochs without end (the training loop stops by step count).

        With workers, one DataLoader serves every epoch (``persistent_workers``): its workers start once, not at
        every epoch, which on a small set (an epoch of a step or two) cost more than the training. Each new
        iteration of the DataLoader restarts every worker's stream at the next epoch (``_BatchStream``), so the
        batches are those of ``__iter__`` epoch after epoch, and a resumed loader continues them exactly."""
        if self.num_workers == 0:
            while True:
                yield from self
        batches: Iterator[dict[str, Any]] | None = None
        try:
            while True:
                stream, epoch = self._stream()
                with stop_signals_held():  # the workers fork here (see data/workers.py)
                    loader = self._dataloader(stream, epoch, persistent=True)
                    batches = iter(loader)
                track_workers(batches)
                while True:
                    yield from self._consume(batches, epoch)
                    if self._epoch == epoch:  # the epoch ended short of its batches: start over where it stands
                        break
                    epoch = self._epoch  # _consume ended the epoch and moved the loader to the next
                    batches = iter(loader)  # the same workers, each now at the stream's next epoch
                stop_workers(batches)
                self._kept.clear()
        finally:  # the consumer stopped (the run's end, a signal, an error): the workers end now
            if batches is not None:
                stop_workers(batches)
            self._kept.clear()

    def _dataloader(self, stream: _BatchStream, epoch: int, persistent: bool = False) -> DataLoader:
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor or 2
            kwargs["multiprocessing_context"] = self.multiprocessing_context
            kwargs["worker_init_fn"] = functools.partial(start_worker, idle=self.idle_workers)
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=persistent and self.num_workers > 0,
            generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank)),
            in_order=True,
            **kwargs,
        )

    def describe_ids(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Readable names for a batch's ``id`` values (to report, e.g., the samples of a non-finite loss)."""
        out = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if self.kind == "shards":
                out.append(f"{self.source.urls[i >> 32]}#{i & 0xFFFFFFFF}")
            else:
                out.append(str(self.source.record(int(i)).id))
        return out


def _rotation(plan: Any, kind: str, epoch: int, start: int) -> int:
    """The logical worker whose batch comes first when resuming at ``start`` (DataLoader starts at worker 0)."""
    if kind == "map":
        return 0
    _, quota, _ = plan.layout(epoch)
    order = round_robin(quota)
    return order[start] if start < len(order) else 0


def _remaining_quotas(plan: Any, epoch: int, start: int) -> list[int]:
    _, quota, _ = plan.layout(epoch)
    remaining = list(quota)
    for w in round_robin(quota)[:start]:
        remaining[w] -= 1
    return remaining


def build_train_loader(
    source: Any,
    transform: Transform,
    tokenize: Tokenize | None,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    **kwargs: Any,
) -> TrainLoader:
    """The training loader over ``source`` (a map-style source or a ``ShardSource``; see ``open_source``).

    Args:
        transform: called on each decoded RGB PIL image; returns a dict of tensors (e.g. ``SLIPTransform``'s
            image / view1 / view2) or a single tensor (batched as ``image``).
        tokenize: called in the workers on the batch's list of captions; returns a LongTensor [B, 77].
            None puts the raw captions in the batch as ``caption``.
        batch_size: per rank. num_workers: DataLoader worker processes (0: in this process).
        seed, rank, world_size: the data order is a function of these and the epoch only.
        drop_last: map-style only; shards always drop the incomplete last batch.
        **kwargs: ``max_skip_rate`` (default 0.1; None disables; see ``SkipCounter.check``),
            ``min_samples_for_check`` (default 100), ``max_attempts`` (replacements tried for one bad sample, and
            consecutive failures allowed in a shard stream, default 100), ``decode`` (a ``DecodeOptions``: size
            guards, JPEG draft size, EXIF orientation; default its defaults), ``pin_memory``,
            ``prefetch_factor``, ``multiprocessing_context``, ``idle_workers`` (run the workers at idle CPU
            priority; for CPU training, where they share the cores with the model),
            ``captions`` (False: never read captions, for SimCLR-only training; batches have no text),
            ``resampled`` (draw samples, or shards, with replacement: ``epoch_plan.epoch_order``, ``ShardDraws``),
            ``reuse_buffers`` (the workers build the batches' images in a ring of shared-memory segments they reuse:
            the consumer must call ``release(batch)`` once it has read them; ``openslip.data.buffer_ring``),
            ``view_dtype`` (the dtype of the transform's floating-point outputs in the batch; default float32).
    """
    return TrainLoader(
        source,
        transform,
        tokenize,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        **kwargs,
    )
