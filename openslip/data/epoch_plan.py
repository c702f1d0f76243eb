"""Which samples make each batch of an epoch, per rank and loader worker, and how a batch is built.

The two plans behind ``openslip.data.loader.TrainLoader`` (see its module docstring for the rules):
``MapPlan`` for map-style sources (a seeded permutation split by position), ``ShardPlan`` for tar shards
(a seeded shard order split into one stream per worker). Both are pure functions of (seed, epoch, rank,
world size, batch size, and for shards the worker count), so a resumed run rebuilds the same batches.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from openslip.data.batch_decode import pack
from openslip.data.formats.decode import DEFAULT_DECODE, DecodeOptions
from openslip.data.formats.shards import ShardSource
from openslip.data.skips import BadSample, SkipCounter
from openslip.errors import DataError

Transform = Callable[[Any], Any]
Tokenize = Callable[[list[str]], torch.Tensor]

PACKED_KEY = "image_data"  # a transform output packed into one buffer (see finish_batch)
_MASK64 = (1 << 64) - 1
# Stream tags so that the hashes for different purposes never coincide.
_TAG_PERM, _TAG_REPLACE, _TAG_CAPTION, _TAG_AUGMENT, _TAG_SHARDS = 1, 2, 3, 4, 5


def mix_seed(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps): deterministic, order-sensitive, well spread."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore torch's CPU RNG, ``random`` and ``numpy.random`` on exit (CUDA generators are never touched)."""
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def seed_all(seed: int) -> None:
    """Seed torch's CPU generator, ``random`` and ``numpy.random`` (the RNGs a transform may draw from)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def round_robin(counts: Sequence[int], start: int = 0) -> list[int]:
    """Worker ids in the order ``DataLoader`` yields their results when worker ``i`` has ``counts[i]`` items
    and the cycle starts at worker ``start``."""
    left = list(counts)
    order: list[int] = []
    w = start
    while any(left):
        if left[w]:
            order.append(w)
            left[w] -= 1
        w = (w + 1) % len(left)
    return order


# ---------------------------------------------------------------------------------------------------------------
# Plans: which batches each (logical) worker builds, and how
# ---------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BatchSettings:
    """What every plan needs to build a batch (shared with the loader, which may change ``seed`` on resume)."""

    transform: Transform
    """Decoded RGB PIL image -> tensor or dict of tensors (e.g. SLIPTransform's image / view1 / view2)."""
    tokenize: Tokenize | None
    """Batch of captions -> LongTensor [B, 77]; None keeps the captions as strings."""
    seed: int
    """Seed of the data order, caption choice and augmentation."""
    rank: int
    """This process's rank."""
    world_size: int
    """Number of ranks."""
    batch_size: int
    """Samples per batch on each rank."""
    max_attempts: int
    """Replacements tried for one bad sample before giving up with DataError."""
    decode: DecodeOptions = DEFAULT_DECODE
    """How images are decoded (size guards, JPEG draft size, EXIF orientation), handed to every ``load_image``."""
    captions: bool = True
    """False: captions are never read (a SimCLR-only run): a sample needs none and batches carry none."""


def render_views(transform: Transform, image: Any) -> Any:
    """``transform(image)`` with autograd switched off (``torch.inference_mode``).

    At the demo's 64 px a sample's views take some 600 small torch calls, and autograd's bookkeeping is a good part
    of each one's cost: without it the views cost ≈ 17 % less CPU (docs/PERFORMANCE.md). The views come back as
    inference tensors; ``finish_batch`` stacks them outside inference mode, which gives ordinary tensors that a
    training step may use."""
    with torch.inference_mode():
        return transform(image)


def finish_batch(
    common: BatchSettings, views: list[Any], texts: list[str], ids: list[int], counter: SkipCounter
) -> dict[str, Any]:
    """Stack the transformed samples, tokenize the captions, attach ids and this batch's skip counts. A transform's
    ``image_data`` (data.decode=device: JPEG bytes or pixels of any size) is packed, not stacked
    (``batch_decode.pack``: ``image_data`` uint8 [N] and ``image_index`` long [B, 4]). Its CPU time goes in the
    batch's ``_meta`` as ``collate_s`` (``openslip bench train`` reports it)."""
    start = time.thread_time()
    if isinstance(views[0], dict):
        batch: dict[str, Any] = {}
        for k in views[0]:
            if k == PACKED_KEY:
                batch[PACKED_KEY], batch[PACKED_KEY.replace("data", "index")] = pack([v[k] for v in views])
            else:
                batch[k] = torch.stack([torch.as_tensor(v[k]) for v in views])
    else:
        batch = {"image": torch.stack([torch.as_tensor(v) for v in views])}
    if common.captions and common.tokenize is not None:
        batch["text"] = common.tokenize(texts)
    elif common.captions:
        batch["caption"] = texts
    batch["id"] = torch.tensor(ids, dtype=torch.long)
    batch["_meta"] = {"skips": counter.state_dict(), "collate_s": time.thread_time() - start}
    return batch


class MapPlan:
    """Batches of a map-style source for one rank and one epoch."""

    def __init__(self, source: Any, common: BatchSettings, drop_last: bool) -> None:
        self.source = source
        self.c = common
        self.drop_last = drop_last
        self.n = len(source)
        self.per_rank = self.n // common.world_size
        if self.per_rank == 0:
            raise DataError(f"{self.n} samples cannot be split over {common.world_size} ranks")
        full, rest = divmod(self.per_rank, common.batch_size)
        self.num_batches = full if drop_last or rest == 0 else full + 1
        if self.num_batches == 0:
            raise DataError(
                f"{self.n:,} samples give {self.per_rank:,} per rank, fewer than the batch size {common.batch_size} "
                "(training: lower train.batch_size or add data)"
            )
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            rng = np.random.default_rng([self.c.seed & _MASK64, epoch, _TAG_PERM])
            self._perm, self._perm_epoch = rng.permutation(self.n), epoch
        return self._perm

    def batches_per_epoch(self, epoch: int) -> int:
        return self.num_batches

    def make_batch(self, epoch: int, b: int) -> dict[str, Any]:
        c = self.c
        perm = self.permutation(epoch)
        lo = b * c.batch_size
        hi = min(lo + c.batch_size, self.per_rank)
        counter = SkipCounter()
        views, texts, ids = [], [], []
        with preserve_rng():
            for i in range(lo, hi):
                pos = c.world_size * i + c.rank  # position in the epoch's permutation
                index, view, text = self._load(epoch, pos, perm, counter)
                views.append(view)
                texts.append(text)
                ids.append(index)
        return finish_batch(c, views, texts, ids, counter)

    def _load(self, epoch: int, pos: int, perm: np.ndarray, counter: SkipCounter) -> tuple[int, Any, str]:
        c = self.c
        index = int(perm[pos])
        for attempt in range(c.max_attempts + 1):
            if attempt:  # replace a bad sample by one at a hashed position of this epoch's permutation
                index = int(perm[mix_seed(c.seed, epoch, pos, attempt, _TAG_REPLACE) % self.n])
            counter.add_seen()
            try:
                record = self.source.record(index)
                captions = record.clean_captions() if c.captions else [""]
                image = record.load_image(c.decode, counter=counter)
            except BadSample as bad:
                counter.skip(bad.reason)
                continue
            text = captions[mix_seed(c.seed, epoch, index, _TAG_CAPTION) % len(captions)]
            seed_all(mix_seed(c.seed, epoch, pos, attempt, _TAG_AUGMENT))
            return index, render_views(c.transform, image), text
        raise DataError(
            f"{c.max_attempts + 1} samples in a row failed to load around permutation position {pos} "
            f"({counter.summary()}); is the data path right?"
        )


class ShardPlan:
    """Batches of a shard source for one rank and one epoch: one stream of shards per logical worker."""

    def __init__(self, source: ShardSource, common: BatchSettings, num_streams: int) -> None:
        self.source = source
        self.c = common
        self.num_streams = num_streams
        self.sizes = source.ensure_sizes()
        if len(source.urls) < common.world_size:
            raise DataError(
                f"{len(source.urls)} shards cannot be split over {common.world_size} ranks; "
                "write more, smaller shards (openslip data make-shards --shard-size)"
            )
        if len(source.urls) < common.world_size * num_streams:
            warnings.warn(
                f"{len(source.urls)} shards for {common.world_size} ranks x {num_streams} workers: some workers "
                "get no shard and stay idle",
                stacklevel=3,
            )
        self._cache: dict[int, tuple[list[list[int]], list[int], int]] = {}

    def layout(self, epoch: int) -> tuple[list[list[int]], list[int], int]:
        """(this rank's shard lists per stream, its batch quota per stream, batches per rank) for ``epoch``."""
        if epoch not in self._cache:
            c, S = self.c, len(self.source.urls)
            order = np.random.default_rng([c.seed & _MASK64, epoch, _TAG_SHARDS]).permutation(S)
            streams = [[[] for _ in range(self.num_streams)] for _ in range(c.world_size)]
            for k, shard in enumerate(order):
                streams[k % c.world_size][(k // c.world_size) % self.num_streams].append(int(shard))
            available = [[sum(self.sizes[s] for s in st) // c.batch_size for st in rank] for rank in streams]
            num_batches = min(sum(a) for a in available)
            if num_batches == 0:
                raise DataError(
                    f"the shards give some rank no full batch of {c.batch_size} (sizes {self.sizes[:8]}...); "
                    "use fewer workers, a smaller batch or more samples"
                )
            # The first `num_batches` of this rank's round-robin order decide each stream's quota.
            quota = [0] * self.num_streams
            for w in round_robin(available[c.rank])[:num_batches]:
                quota[w] += 1
            self._cache = {epoch: (streams[c.rank], quota, num_batches)}
        return self._cache[epoch]

    def batches_per_epoch(self, epoch: int) -> int:
        return self.layout(epoch)[2]

    def iterate(
        self, epoch: int, logical: int, count: int, stream_pos: tuple[int, int, int]
    ) -> Iterator[dict[str, Any]]:
        """``count`` batches of stream ``logical`` starting at ``stream_pos = (cycle, shard in list, sample)``."""
        c = self.c
        shards = self.layout(epoch)[0][logical]
        if count == 0:
            return
        if not shards:
            raise DataError(f"worker stream {logical} of rank {c.rank} has batches to make but no shard")
        samples = self._samples(epoch, shards, stream_pos)
        # Like MapPlan's replacement attempts: a stream whose samples all fail (no caption anywhere, every image
        # undecodable) would otherwise read its shards round and round forever.
        failures = 0
        recent = SkipCounter()  # the reasons of the current run of failures, for the message
        for _ in range(count):
            counter = SkipCounter()
            views, texts, ids = [], [], []
            end = stream_pos
            with preserve_rng():
                while len(views) < c.batch_size:
                    if failures > c.max_attempts:
                        names = ", ".join(os.path.basename(self.source.urls[s]) for s in shards[:4])
                        more = f" and {len(shards) - 4} more" if len(shards) > 4 else ""
                        raise DataError(
                            f"{failures} samples in a row failed to load in loader stream {logical} of rank {c.rank} "
                            f"(shards {names}{more}): {recent.summary()}; is the data path right?"
                        )
                    item = next(samples)
                    if isinstance(item, str):  # a bad shard, reported by its reason
                        counter.add_seen()
                        counter.skip(item)
                        recent.add_seen()
                        recent.skip(item)
                        failures += 1
                        continue
                    cycle, li, sample = item
                    end = (cycle, li, sample.position + 1)
                    counter.add_seen()
                    try:
                        captions = sample.clean_captions() if c.captions else [""]
                        image = sample.load_image(c.decode, counter=counter)
                    except BadSample as bad:
                        counter.skip(bad.reason)
                        recent.add_seen()
                        recent.skip(bad.reason)
                        failures += 1
                        continue
                    failures, recent = 0, SkipCounter()
                    text = captions[mix_seed(c.seed, epoch, sample.id, _TAG_CAPTION) % len(captions)]
                    seed_all(mix_seed(c.seed, epoch, sample.id, cycle, _TAG_AUGMENT))
                    views.append(render_views(c.transform, image))
                    texts.append(text)
                    ids.append(sample.id)
            batch = finish_batch(c, views, texts, ids, counter)
            batch["_meta"]["stream"] = [logical, *end]
            yield batch

    def _samples(self, epoch: int, shards: list[int], pos: tuple[int, int, int]) -> Iterator[Any]:
        """(cycle, list index, ShardSample) forever over the stream's shards, from ``pos``; bad shards as reasons."""
        cycle, li, skip = pos
        errors: list[str] = []
        while True:
            good_in_cycle = False
            full_cycle = li == 0 and skip == 0
            while li < len(shards):
                for sample in self.source.iter_shard(
                    shards[li], skip=skip, on_error=lambda r, d: errors.append(r), max_bytes=self.c.decode.max_bytes
                ):
                    good_in_cycle = True
                    yield cycle, li, sample
                while errors:
                    yield errors.pop()
                li, skip = li + 1, 0
            if not good_in_cycle and full_cycle:
                raise DataError(f"the shards of worker stream {shards} hold no readable sample")
            cycle, li = cycle + 1, 0
